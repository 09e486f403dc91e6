"""experiments/bench.py: one tiny case end to end, in process (one CPU device)."""

from __future__ import annotations

import json

import pytest

from experiments import bench


def test_bench_prints_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # --compile-cache: leave this pytest process's JAX settings alone
    args = ["--model", "nano_xs", "--batch", "4", "--seq-len", "32", "--steps", "2", "--warmup", "1",
            "--set", "model.vocab_size=384", "--set", "model.attention_impl=cudnn", "--json", str(out),
            "--compile-cache"]  # fmt: skip
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    for label in ("compile", "step", "tokens/s", "TFLOP/s", "MFU", "loader", "device"):
        assert f"   {label}" in printed, label
    assert "(model)" in printed and "(6N)" in printed
    assert "attention xla (asked for cudnn)" in printed  # the CPU fallback is visible
    (r,) = json.loads(out.read_text())
    assert r["model"] == "nano_xs" and r["batch"] == 4 and r["seq_len"] == 32 and r["attention_impl"] == "xla"
    assert r["compile_s"] > 0 and r["step_s"] > 0 and r["tokens_per_s"] == pytest.approx(4 * 32 / r["step_s"])
    assert r["tflops_model"] > r["tflops_6n"] > 0 and 0 < r["mfu_6n"] < r["mfu_model"]
    assert r["loader_tokens_per_s"] > 0


def test_bench_rejects_unknown_names():
    with pytest.raises(SystemExit, match="no model config 'nano_zz'"):
        bench.main(["--model", "nano_zz"])
    with pytest.raises(SystemExit, match="has no field 'widht'"):
        bench.main(["--model", "nano_xs", "--set", "model.widht=3"])
