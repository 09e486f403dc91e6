"""experiments/bench.py: one tiny case end to end, in process (one CPU device)."""

from __future__ import annotations

import json

import jax
import pytest

from experiments import bench


def test_bench_prints_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # --compile-cache: leave this pytest process's JAX settings alone
    args = [
        "--model",
        "nano_xs",
        "--batch",
        "4",
        "--seq-len",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--set",
        "model.vocab_size=384",
        "--set",
        "model.attention_impl=cudnn",
        "--json",
        str(out),
        "--compile-cache",
        "--cached-compile",
    ]
    cache_settings = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    assert bench.main(args) == 0
    assert (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) == cache_settings
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
    # the re-compile hit the persistent cache (bench raises on a miss) and is printed next to the cold one
    assert r["compile_cached_s"] > 0 and "; from the persistent cache " in printed


def test_bench_rejects_unknown_names():
    with pytest.raises(SystemExit, match="no model config 'nano_zz'"):
        bench.main(["--model", "nano_zz"])
    with pytest.raises(SystemExit, match="has no field 'widht'"):
        bench.main(["--model", "nano_xs", "--set", "model.widht=3"])


def test_pytorch_reference_runs_next_to_the_case():
    """The issue's PyTorch reference, measured live (the CPU's speed drifts; a ratio is fair within a minute)."""
    live = bench.pytorch_now("nanogpt_bench_s", steps=1)
    assert live is not None and live["tokens_per_s"] > 0 and live["allocator"] in ("tcmalloc", "glibc malloc")
    assert live["best_tokens_per_s"] >= live["tokens_per_s"]
    assert bench.pytorch_now("nano_xs", steps=1) is None  # only the two shapes have a reference
    line = bench.report({**_FAKE, "pytorch_now": live})
    assert f"PyTorch measured right after ({live['tokens_per_s']:,.0f} tokens/s, float32" in line


_FAKE = dict(
    model="nanogpt_bench_s",
    params=1,
    n_layer=4,
    d_model=128,
    n_head=4,
    d_head=32,
    batch=16,
    seq_len=256,
    microbatches=1,
    device="cpu",
    n_devices=1,
    platform="cpu",
    mesh="single",
    param_dtype="float32",
    compute_dtype="bfloat16",
    attention_impl="xla",
    attention_requested="xla",
    remat="none",
    scan_layers=False,
    compile_s=1.0,
    init_s=1.0,
    step_s=0.2,
    step_s_min=0.18,
    steps_timed=2,
    tokens_per_s=20480.0,
    tflops_model=0.1,
    tflops_6n=0.05,
    flops_per_token_model=1.0,
    flops_per_token_6n=1.0,
    mfu_model=0.1,
    mfu_6n=0.05,
    peak_flops=None,
)
