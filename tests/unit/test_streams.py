"""Streams: the train step split into independent sub-batches (CPU throughput) makes the full batch's update."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from research.config.schema import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from research.cpu.streams import STREAM_MIN_TOKENS, auto_streams
from research.train import programs

MODEL = ModelConfig(name="t", n_layer=2, d_model=32, n_head=2, vocab_size=64, seq_len=16)


def _one_step(microbatches: int, streams: int):
    train = TrainConfig(batch_size=8, steps=10, microbatches=microbatches, streams=streams)
    optim = OptimConfig(warmup_steps=1)
    p = programs.build(Config(model=MODEL, data=DataConfig(vocab_size=64), optim=optim, train=train, mesh=MeshConfig()))
    state = p.init_state(0)
    tokens = np.random.default_rng(0).integers(0, MODEL.vocab_size, (8, MODEL.seq_len + 1), dtype=np.int32)
    state, metrics = p.train_step(state, jax.device_put(tokens, p.batch_sharding))
    return float(metrics["loss"]), float(metrics["grad_norm"]), jax.tree.leaves(state.params)


def test_streams_make_the_full_batch_update():
    loss, norm, params = _one_step(1, 1)
    for microbatches, streams in ((1, 2), (1, 4), (2, 2)):
        loss_s, norm_s, params_s = _one_step(microbatches, streams)
        assert loss_s == pytest.approx(loss, rel=1e-6), (microbatches, streams)
        assert norm_s == pytest.approx(norm, rel=1e-5), (microbatches, streams)
        for a, b in zip(params_s, params, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_auto_streams_only_for_bf16_on_the_cpu_and_large_enough_sub_batches():
    bf16 = "bfloat16"
    assert auto_streams(16, 256, "cpu", bf16) == 4  # the nanogpt_bench shapes: 4 x 1,024 tokens
    assert auto_streams(16, 128, "cpu", bf16) == 2
    assert auto_streams(8, 128, "cpu", bf16) == 1  # 1,024 tokens in all
    assert auto_streams(6, 512, "cpu", bf16) == 2  # 4 does not divide 6 rows
    assert auto_streams(16, 256, "cpu", "float32") == 1  # measured slower in float32
    assert auto_streams(512, 1024, "gpu", bf16) == 1 and auto_streams(512, 1024, "tpu", bf16) == 1
    for rows, seq in ((16, 256), (16, 128), (6, 512), (64, 64)):
        streams = auto_streams(rows, seq, "cpu", bf16)
        assert rows % streams == 0 and (streams == 1 or rows // streams * seq >= STREAM_MIN_TOKENS)
