"""End to end: a tiny model trains on real text and leaves complete, readable records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_overrides, train_in_process

from research.metrics import read_jsonl
from research.train.records import RESULT_FIELDS


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_dir):
    base = tmp_path_factory.mktemp("train")
    run_dir = base / "run"
    results = train_in_process(run_dir, tiny_overrides(corpus_dir, base / "data"))
    return run_dir, results


def test_results_json_has_every_field(trained):
    run_dir, results = trained
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert set(on_disk) == set(RESULT_FIELDS)
    assert on_disk["status"] == "completed"
    assert on_disk["steps"] == 30 and on_disk["batch_tokens"] == 8 * 64 and on_disk["tokens"] == 30 * 512
    assert on_disk["flops"] == 6 * on_disk["params_nonembed"] * on_disk["tokens"]
    assert on_disk["flops_model"] > on_disk["flops"]
    assert on_disk["params"] == on_disk["params_nonembed"] + on_disk["params_embed"]
    for key in ("final_train_loss", "final_val_loss", "val_bpb", "tokens_per_second", "wall_seconds"):
        assert isinstance(on_disk[key], float) and on_disk[key] > 0, key
    assert on_disk["config"]["model"]["name"] == "nano_xs"
    assert on_disk["streams"] == 1  # automatic: float32 compute runs one stream
    assert (on_disk["microbatches"], on_disk["remat"], on_disk["memory_fit"]) == (1, "none", None)  # as set
    assert on_disk["error"] is None
    # the session's overhead, part of its wall time: start-up up to the first step, and that first step
    assert 0 < on_disk["startup_seconds"] and 0 < on_disk["compile_seconds"]
    assert on_disk["startup_seconds"] + on_disk["compile_seconds"] < on_disk["wall_seconds"]


def test_loss_falls_and_metrics_rows(trained):
    run_dir, _ = trained
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    for r in rows:
        assert {"step", "tokens", "flops", "loss", "lr", "grad_norm", "tokens_per_second", "mfu"} <= set(r)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [15, 30]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_tensorboard_events_read_back(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = trained
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "val/loss", "val/bpb", "lr", "grad_norm", "tokens_per_second", "mfu", "tokens", "flops"}
    assert expected <= tags
    assert [e.step for e in acc.Scalars("val/loss")] == [15, 30]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(rows[-1]["loss"], rel=1e-6)


def test_same_seed_same_losses_different_seed_differs(tmp_path, corpus_dir, trained):
    run_dir, _ = trained
    first = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    cache = run_dir.parent / "data"
    again = tmp_path / "again"
    train_in_process(again, tiny_overrides(corpus_dir, cache))
    assert [r["loss"] for r in read_jsonl(again / "metrics.jsonl")] == first
    other = tmp_path / "other"
    train_in_process(other, tiny_overrides(corpus_dir, cache, "train.seed=1"))
    assert [r["loss"] for r in read_jsonl(other / "metrics.jsonl")] != first


@pytest.mark.slow
def test_entry_point_writes_run_dir(tmp_path, corpus_dir):
    """The Hydra entry point itself: hydra.run.dir places the run, .hydra/ and train.log land there."""
    run_dir = tmp_path / "cli_run"
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "train.py"),
        *tiny_overrides(corpus_dir, tmp_path / "data"),
        "train.steps=6",
        f"hydra.run.dir={run_dir}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    assert (run_dir / ".hydra" / "config.yaml").exists()
    log = (run_dir / "train.log").read_text()
    assert "unigram entropy" in log and "done: val loss" in log


def test_bad_setting_exits_with_one_sentence(tmp_path, corpus_dir):
    run_dir = tmp_path / "bad"
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "train.py"),
        *tiny_overrides(corpus_dir, tmp_path / "data"),
        "model.n_head=3",
        f"hydra.run.dir={run_dir}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "model.d_model=32 is not divisible by model.n_head=3" in out.stderr
    assert "Traceback" not in out.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "model.n_head=3" in results["error"]


def test_a_run_records_the_streams_it_used(tmp_path, corpus_dir):
    results = train_in_process(
        tmp_path / "run",
        tiny_overrides(corpus_dir, tmp_path / "data", "train.streams=2", "train.steps=4", "train.eval_every=4"),
    )
    assert results["status"] == "completed" and results["streams"] == 2
    assert results["config"]["train"]["streams"] == 2


def test_automatic_microbatches_under_a_budget_are_recorded(tmp_path, corpus_dir, caplog):
    """train.microbatches=auto on the CPU against train.memory_budget_gb: results.json says what ran and why."""
    from research import memory_fit
    from research.config.hydra import compose, to_config

    overrides = tiny_overrides(corpus_dir, tmp_path / "data", "train.steps=4", "train.eval_every=4")
    cfg = to_config(compose([*overrides, "train.microbatches=auto"]))
    two = memory_fit.candidates(cfg, {"data": 1, "fsdp": 1, "tensor": 1})[1]  # 2 microbatches, remat none
    budget = f"train.memory_budget_gb={two.planned_bytes * 1.001 / 1e9:.9f}"
    with caplog.at_level("INFO", logger="train"):
        results = train_in_process(tmp_path / "run", [*overrides, "train.microbatches=auto", budget])
    assert results["status"] == "completed" and results["config"]["train"]["microbatches"] == "auto"
    fit = results["memory_fit"]
    assert (results["microbatches"], results["remat"]) == (fit["microbatches"], fit["remat"])
    assert results["microbatches"] >= 2 and fit["planned_bytes"] <= fit["usable_bytes"]
    assert fit["xla_bytes"] is not None and fit["xla_bytes"] <= fit["usable_bytes"]  # the CPU reports XLA's figure
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory fit")]
    assert fit["reason"] in line and "XLA's figure" in line
