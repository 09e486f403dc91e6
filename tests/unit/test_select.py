"""research/ops/select.py: the kernels chosen once per run, and the loud fallback when cuDNN attention cannot run."""

from __future__ import annotations

import logging

from research.config.schema import ModelConfig
from research.ops import select


def test_cudnn_falls_back_loudly_once_and_records_the_path(caplog):
    cfg = ModelConfig(name="t", n_layer=1, d_model=32, n_head=2, vocab_size=64, seq_len=16, attention_impl="cudnn")
    select._warned.clear()
    with caplog.at_level(logging.WARNING, logger="research.ops.select"):
        assert select.attention_impl(select.select(cfg, "cpu")) == "xla"
        assert select.attention_impl(select.select(cfg, "cpu")) == "xla"
    warnings = [r.getMessage() for r in caplog.records if "SLOW ATTENTION" in r.getMessage()]
    assert len(warnings) == 1 and "not a CUDA GPU" in warnings[0]
    # on a GPU with float32 compute the reason is the dtype (decided before anything compiles)
    assert "compute_dtype=bfloat16" in select._cudnn_unavailable("gpu", "float32", 2, 16, 16, 0)
    xla = ModelConfig(name="t", n_layer=1, d_model=32, n_head=2, vocab_size=64, seq_len=16)
    assert select.attention_impl(select.select(xla, "cpu")) == "xla"
