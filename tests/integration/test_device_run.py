"""The device script (experiments/bench_device.sh -> experiments/device_run.py): its dry run on this CPU goes
through every stage and writes every file the GPU run returns; the GPU run's own settings compose and
validate here, so a typo in them does not first show on a lent GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, compose

from experiments import bench, device_run
from research.config.hydra import to_config
from research.config.validate import validate


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-out")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "bench_device.sh"), "--dry-run", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


def test_dry_run_goes_through_every_stage(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["mfu_goal_met"] is None
    assert set(summary["stages"]) == {"env", "bench_small", "bench_medium", "run1", "run2"}
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    assert "nvidia-smi" in (out / "nvidia-smi.txt").read_text()
    env = json.loads((out / "env.json").read_text())
    assert env["backend"] == "cpu" and env["jax"]
    for name in ("nano_xs", "nano_s"):
        r = json.loads((out / f"bench_{name}.json").read_text())[0]
        assert r["attention_requested"] == "cudnn" and r["compute_dtype"] == "bfloat16"
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and 0 < r["mfu_6n"] < r["mfu_model"]
        assert r["xla_bytes"] > 0 and "peak_bytes" in r  # the allocator's peak: None on the CPU
    assert json.loads((out / "bench_nano_xs.json").read_text())[0]["compile_cached_s"] > 0
    text = (out / "summary.txt").read_text()
    assert "nano_xs: step" in text and "(cached" in text and "MFU goal 50%" in text


def test_dry_run_trains_checkpoints_stops_and_resumes(dry_run):
    proc, out = dry_run
    train = json.loads((out / "summary.json").read_text())["train"]
    run1, run2 = train["run1"], train["run2"]
    assert run1["status"] == "running" and run1["stopped_after_step"] >= 8  # after the first checkpoint (step 8)
    assert 8 in run1["checkpoints"] and run1["stopped_after_step"] in run1["checkpoints"]
    assert run2["resumed_from_step"] == run1["stopped_after_step"] and run2["status"] == "completed"
    assert train["resumed"] is True and train["final"]["steps"] == 24
    results = json.loads((out / "train" / "results.json").read_text())
    assert results["status"] == "completed" and results["config"]["train"]["microbatches"] == "auto"
    assert results["microbatches"] == 1 and results["memory_fit"]["usable_bytes"] == 1e9
    assert results["memory_fit"]["xla_bytes"] is not None  # the CPU reports XLA's figure: it was confirmed
    assert run2["compile_seconds"] < run1["compile_seconds"]  # run 2 loads run 1's programs from the cache
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 24 and any("val_loss" in r for r in rows)
    assert "stopped by SIGTERM after step" in (out / "train" / "run1.log").read_text()


def test_the_gpu_runs_settings_compose_and_validate():
    """The GPU plan, checked as far as a CPU can: the training run composes and validates with train=gpu's
    automatic fit, and each benchmark case composes (bench.case_config validates it)."""
    plan = device_run.GPU
    overrides = [*device_run.TRAIN_COMMON.split(), *plan["train"].split()]
    cfg = to_config(compose(overrides))
    validate(cfg, n_devices=1)
    assert (cfg.model.name, cfg.data.name, cfg.train.steps, cfg.train.batch_size) == ("gpt2_small", "books", 300, 32)
    assert cfg.train.microbatches == "auto" and cfg.train.checkpoint_every == 150
    assert cfg.model.attention_impl == "cudnn" and cfg.model.compute_dtype == "bfloat16"
    for name, model in (("bench_small", "gpt2_small"), ("bench_medium", "gpt2_medium")):
        args = bench.parser().parse_args(plan[name].split())
        keys = ("model", "mesh", "batch", "seq_len", "steps", "warmup", "microbatches", "streams")
        case = {k: getattr(args, k) for k in keys}
        bench_cfg = bench.case_config(case, args.sets)
        assert (bench_cfg.model.name, bench_cfg.train.batch_size, bench_cfg.train.seq_len) == (model, 32, 1024)
        assert bench_cfg.model.attention_impl == "cudnn" and bench_cfg.model.vocab_pad_multiple == 128
    # the whole plan fits the 8 minutes, with time to install the wheels and start Python
    assert device_run.DEADLINE_S <= 450
