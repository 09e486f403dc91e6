"""Fault tolerance end to end: kill -9 and SIGTERM resume bit-identically, damaged checkpoints are
skipped, a disk that fills up costs no checkpoint, and NaN / spike policies do what they say."""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_overrides, train_in_process
from helpers import checkpoint_steps, flip_byte, largest_file

from research.checkpoint import Checkpointer, CheckpointError
from research.errors import BadStepsError, ConfigError
from research.metrics import read_jsonl

TIMING = {"tokens_per_second", "mfu"}  # the only values allowed to differ between two runs
STEPS = 40  # checkpoints every 10 steps, logs every 5, evals every 15 (tiny_overrides)


def run_overrides(corpus: Path, cache: Path, *extra: str) -> list[str]:
    return tiny_overrides(corpus, cache, f"train.steps={STEPS}", *extra)


def cli(run_dir: Path, corpus: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "experiments" / "train.py"),
        *run_overrides(corpus, cache, *extra),
        f"hydra.run.dir={run_dir}",
    ]


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(run_dir / "metrics.jsonl")]


def final_state(run_dir: Path) -> tuple[int, dict]:
    """The newest checkpoint's arrays, as {path: numpy array}."""
    ckpt = Checkpointer(run_dir / "checkpoints", read_only=True)
    step = ckpt.steps()[-1]
    state, _, _ = ckpt.restore(step, None)
    ckpt.close()
    return step, {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)}


def assert_same_run(reference: Path, other: Path) -> None:
    """Bit-identical final parameters, optimizer state, RNG and guard; identical metrics and final loss."""
    step_a, a = final_state(reference)
    step_b, b = final_state(other)
    assert step_a == step_b == STEPS
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), f"{k} differs"
    assert rows(reference) == rows(other)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (reference, other))
    assert rb["status"] == "completed"
    assert ra["final_train_loss"] == rb["final_train_loss"] and ra["final_val_loss"] == rb["final_val_loss"]


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run exited early with {proc.returncode}")
        path = run_dir / "metrics.jsonl"
        if path.exists():
            logged = [r["step"] for r in read_jsonl(path)]
            if logged and max(logged) >= step:
                return max(logged)
        time.sleep(0.02)
    raise AssertionError(f"step {step} never logged")


def tb_steps(run_dir: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir):
    """An uninterrupted run: what every interrupted one must reproduce bit for bit."""
    base = tmp_path_factory.mktemp("fault")
    run_dir = base / "reference"
    train_in_process(run_dir, run_overrides(corpus_dir, base / "data"))
    assert checkpoint_steps(run_dir) == [30, 40]
    return base, run_dir


# ---------------------------------------------------------------------------------------------
# Interruptions


@pytest.mark.slow
def test_kill9_between_checkpoints_resumes_bit_identically(reference, corpus_dir):
    base, ref_dir = reference
    run_dir = base / "killed"
    cmd = cli(run_dir, corpus_dir, base / "data", "train.debug_step_delay=0.05")
    with open(base / "killed.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        try:
            logged = wait_for_step(run_dir, proc, 25)
        finally:
            proc.kill()  # SIGKILL: no handler, no final save
            proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    saved = checkpoint_steps(run_dir)
    assert saved and max(saved) < logged, "the kill must land past the newest checkpoint"
    assert max(saved) == 20
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from the checkpoint at step 20" in out.stdout + out.stderr
    assert_same_run(ref_dir, run_dir)
    assert tb_steps(run_dir) == list(range(5, STEPS + 1, 5))  # every step once, none lost
    assert tb_steps(run_dir, "val/loss") == [15, 30, 40]


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resumes_identically(reference, corpus_dir):
    base, ref_dir = reference
    run_dir = base / "terminated"
    cmd = cli(run_dir, corpus_dir, base / "data", "train.debug_step_delay=0.05")
    with open(base / "terminated.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        try:
            wait_for_step(run_dir, proc, 15)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(120)
        finally:
            proc.kill()
    log = (base / "terminated.log").read_text()
    assert rc == 0, log[-3000:]
    assert "stopped by SIGTERM after step" in log and "rerun the same command to resume" in log
    stopped_at = checkpoint_steps(run_dir)[-1]
    assert 15 <= stopped_at < STEPS and stopped_at % 10, "a checkpoint at the step the signal arrived"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "running" and results["error"].startswith("preempted")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from the checkpoint at step {stopped_at}" in out.stdout + out.stderr
    assert_same_run(ref_dir, run_dir)
    assert tb_steps(run_dir) == list(range(5, STEPS + 1, 5))


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints and disks


def test_corrupted_newest_checkpoint_falls_back_to_previous(reference, corpus_dir, caplog):
    """Silent corruption (a flipped byte in the parameter data) and a crash mid-save (a leftover
    temporary folder): the run says so, resumes from step 30 and finishes as if nothing happened."""
    base, ref_dir = reference
    run_dir = base / "damaged"
    shutil.copytree(ref_dir, run_dir)
    flip_byte(largest_file(run_dir / "checkpoints" / "40" / "state"))
    (run_dir / "checkpoints" / "50.orbax-checkpoint-tmp-1234").mkdir()
    with caplog.at_level(logging.INFO):
        train_in_process(run_dir, run_overrides(corpus_dir, base / "data"))
    assert "the checkpoint at step 40" in caplog.text and "is damaged" in caplog.text
    assert "resumed from the checkpoint at step 30" in caplog.text
    assert [p.name.split("-")[0] for p in (run_dir / "checkpoints.damaged").iterdir()] == ["40"]
    assert not list((run_dir / "checkpoints").glob("*tmp*"))
    assert_same_run(ref_dir, run_dir)


def test_disk_full_during_a_run_then_resume(reference, corpus_dir, monkeypatch):
    """A full disk inside the loop (the step-20 save fails with ENOSPC): the run fails with the
    sentence, step 10 is intact, and rerunning once there is room finishes exactly like the
    uninterrupted run."""
    import errno

    import orbax.checkpoint as ocp

    base, ref_dir = reference
    run_dir = base / "disk_full"
    original = ocp.CheckpointManager.save

    def save_on_a_full_disk(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_on_a_full_disk)
    with pytest.raises(CheckpointError, match="could not write the checkpoint of step 20"):
        train_in_process(run_dir, run_overrides(corpus_dir, base / "data"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "No space left on device" in results["error"]
    assert "(steps: 10) are untouched" in results["error"]
    assert checkpoint_steps(run_dir) == [10]
    monkeypatch.undo()
    train_in_process(run_dir, run_overrides(corpus_dir, base / "data"))
    assert_same_run(ref_dir, run_dir)


def test_external_resume_needs_permission_and_then_continues_exactly(reference, corpus_dir):
    base, ref_dir = reference
    source = base / "elsewhere" / "checkpoints"
    shutil.copytree(ref_dir / "checkpoints" / "30", source / "30")
    run_dir = base / "forked"
    with pytest.raises(ConfigError, match="outside the run directory .*set train.allow_external_resume=true"):
        train_in_process(run_dir, run_overrides(corpus_dir, base / "data", f"train.resume_from={source}"))
    train_in_process(
        run_dir,
        run_overrides(
            corpus_dir, base / "data", f"train.resume_from={source.parent}", "train.allow_external_resume=true"
        ),
    )
    step, a = final_state(ref_dir)
    _, b = final_state(run_dir)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert rows(run_dir) == [r for r in rows(ref_dir) if r["step"] > 30]


# ---------------------------------------------------------------------------------------------
# NaN, Inf and loss spikes


def policy_overrides(corpus: Path, cache: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        corpus,
        cache,
        "train.steps=20",
        "train.checkpoint_every=5",
        "train.eval_every=10",
        "train.keep_checkpoints=5",
        "train.spike_window=5",
        *extra,
    )


def test_bad_step_leaves_parameters_and_optimizer_state_unchanged(tmp_path, corpus_dir):
    from conftest import compose

    from research.config.hydra import to_config
    from research.train import programs

    # no warmup: the first applied update moves the weights; poison steps listed: the step takes a loss scale
    overrides = policy_overrides(corpus_dir, tmp_path / "data", "optim.warmup_steps=0", "train.debug_poison_steps=[1]")
    p = programs.build(to_config(compose(overrides)))
    state, step, batch_sh = p.init_state(0), p.train_step, p.batch_sharding
    tokens = jax.device_put(np.arange(8 * 65, dtype=np.int32).reshape(8, 65) % 384, batch_sh)
    before = jax.device_get((state.params, state.opt_state))
    for n, scale in enumerate((np.nan, np.inf), start=1):
        state, m = step(state, tokens, np.float32(scale))
        after = jax.device_get((state.params, state.opt_state))
        assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
        assert int(state.step) == n and int(m["nonfinite_steps"]) == n and int(m["guard_last_bad_step"]) == n
    state, m = step(state, tokens, np.float32(1.0))
    after = jax.device_get(state.params)
    assert not all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before[0]), jax.tree.leaves(after), strict=True)
    )
    assert int(m["guard_skipped"]) == 2 and int(m["guard_streak_step"]) == -1


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_policy_skip_drops_the_bad_update_and_counts_it(tmp_path, corpus_dir, caplog):
    run_dir = tmp_path / "skip"
    with caplog.at_level(logging.WARNING):
        train_in_process(
            run_dir,
            policy_overrides(
                corpus_dir, tmp_path / "data", "train.debug_poison_steps=[7]", "train.debug_poison_kind=inf"
            ),
        )
    assert "1 bad step(s) up to step 10, the last at step 7 (a non-finite loss or gradient, batch 7" in caplog.text
    r = _results(run_dir)
    assert r["status"] == "completed" and math.isfinite(r["final_train_loss"])
    assert (r["nonfinite_steps"], r["spike_steps"], r["skipped_steps"], r["rollbacks"]) == (1, 0, 1, 0)
    by_step = {row["step"]: row for row in read_jsonl(run_dir / "metrics.jsonl")}
    assert by_step[5]["nonfinite_steps"] == 0 and by_step[10]["nonfinite_steps"] == 1
    assert by_step[20]["skipped_steps"] == 1
    assert [e.value for e in _tb(run_dir, "health/skipped_steps")] == [0, 1, 1, 1]


def _tb(run_dir: Path, tag: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return acc.Scalars(tag)


def test_policy_skip_catches_a_loss_spike(tmp_path, corpus_dir):
    run_dir = tmp_path / "spike"
    train_in_process(
        run_dir,
        policy_overrides(
            corpus_dir, tmp_path / "data", "train.debug_poison_steps=[14]", "train.debug_poison_kind=spike"
        ),
    )
    r = _results(run_dir)
    assert (r["nonfinite_steps"], r["spike_steps"], r["skipped_steps"]) == (0, 1, 1)
    assert r["status"] == "completed"


def test_policy_rollback_restores_the_last_checkpoint_and_skips_the_batches(tmp_path, corpus_dir, caplog):
    run_dir = tmp_path / "rollback"
    with caplog.at_level(logging.WARNING):
        train_in_process(
            run_dir,
            policy_overrides(
                corpus_dir, tmp_path / "data", "train.nan_policy=rollback", "train.debug_poison_steps=[12]"
            ),
        )
    assert "rolled back to the weights of step 10; the batches of steps 11..15 are skipped" in caplog.text
    r = _results(run_dir)
    assert r["status"] == "completed" and math.isfinite(r["final_train_loss"])
    # the poisoned update and the 4 good ones after it, up to the check at step 15, never count
    assert (r["nonfinite_steps"], r["skipped_steps"], r["rollbacks"]) == (1, 5, 1)
    ckpt = Checkpointer(run_dir / "checkpoints", read_only=True)
    (s10, _, m10), (s15, loader15, m15) = ckpt.restore(10, None), ckpt.restore(15, None)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(s10["params"]), jax.tree.leaves(s15["params"]), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()  # step 15 holds step 10's weights
    assert int(s15["step"]) == 15 and loader15["step"] == 15  # the step and the data stream moved on
    assert m10["verified"] and m15["verified"] and m15["health"]["rollbacks"] == 1


def test_policy_stop_names_the_step_and_the_batch(tmp_path, corpus_dir):
    run_dir = tmp_path / "stop"
    with pytest.raises(BadStepsError) as err:
        train_in_process(
            run_dir,
            policy_overrides(
                corpus_dir, tmp_path / "data", "train.nan_policy=stop", "train.debug_poison_steps=[6,7,8]"
            ),
        )
    message = str(err.value)
    assert "3 consecutive bad steps ending at step 8" in message and "batch 8 of the train stream" in message
    assert "train.nan_policy=skip or rollback" in message and message.count("\n") == 0
    r = _results(run_dir)
    assert r["status"] == "failed" and r["error"] == message
    assert (r["nonfinite_steps"], r["skipped_steps"]) == (3, 3)
    assert checkpoint_steps(run_dir) == [5]  # nothing saved after the streak
