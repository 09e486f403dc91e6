"""results.json: the run's record (fields in docs/architecture.md, "Records"), and what a run directory
already holds.

This module is the only writer of results.json (the train loop, a failure before the loop, a sweep's
compile-ahead figures) and `existing_run` the only check of a finished run: a completed record with
the same config is final (the run is skipped), one with a different config is refused.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from research.errors import ConfigError

log = logging.getLogger("train")

RESULT_FIELDS = (
    "status", "experiment", "run_name", "model", "params", "params_nonembed", "params_embed", "tokens", "steps",
    "batch_tokens", "seq_len", "flops", "flops_model", "final_train_loss", "final_val_loss", "val_bpb",
    "tokens_per_second", "mfu", "wall_seconds", "device", "n_devices", "config", "git_sha", "error",
    # bad steps (research/train/guards.py): NaN/Inf steps, loss spikes, updates not applied, rollbacks
    "nonfinite_steps", "spike_steps", "skipped_steps", "rollbacks",
    "attention_impl",  # the attention kernel that ran (xla, or cudnn when the fast path was available)
    "streams",  # independent sub-batches per (micro)batch in the train step (train.streams, resolved)
    # overhead of this session, both inside wall_seconds: start-up (config checks, data, init, restore, up to
    # the first step) and compiling the init, train and eval programs (or loading them from the cache)
    "startup_seconds", "compile_seconds",
    # in a local sweep: seconds this member waited, before its start-up, for the compile of its programs
    # that ran while the previous member trained, and how long that compile took (research/cpu/compile_ahead.py)
    "compile_ahead_wait_seconds", "compile_ahead_seconds",
    "kernels",  # every kernel choice of research/ops/select.py (attention, merge_heads, residual_barrier)
    # gradient accumulation and remat that ran (train.microbatches=auto chooses them: research/memory_fit.py)
    # and, under auto, the choice's figures and reason (planned and XLA's bytes, the budget); else null
    "microbatches", "remat", "memory_fit",
)  # fmt: skip

# Settings that may change between a run and its resumption without changing what it computes
# (or that the user must be able to change to get past a failure: the bad-step policy).
RESUME_HARMLESS = frozenset({
    "data.cache_dir", "train.progress", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints", "train.device_peak_flops",
    "train.nan_policy", "train.max_bad_steps", "train.max_rollbacks", "train.spike_factor", "train.spike_window",
    "train.resume_from", "train.allow_external_resume", "train.experiment", "train.run_name", "train.debug_step_delay",
    "train.memory_budget_gb",  # under auto it only splits the same update differently; a lower one gets past an OOM
})  # fmt: skip
# Sections of the composed config that never change what a run computes: output (plan.py's format), plan.*
# (the planner's settings) and sweep.* (what picks a member: its shape, budget and rules; the resolved
# model, data, optim and train settings say what it computes, so a member differing only in sweep.* -- a
# re-centred grid, a longer ladder, another law -- is the same run), and how the data was prepared (its
# workers, executor, bad-record policy: the same tokens either way).
NOT_COMPUTED = ("output", "plan.", "sweep.", "data.workers", "data.executor", "data.slurm.", "data.on_bad_record")


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def empty_results() -> dict[str, Any]:
    return {k: None for k in RESULT_FIELDS}


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Write then rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return None


class RunRecord:
    """The results.json of one run, kept in memory and written on every save (by process 0 only)."""

    def __init__(self, run_dir: Path, *, write: bool = True) -> None:
        self.path = Path(run_dir) / "results.json"
        self.write = write
        self.fields = empty_results()

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def update(self, **values: Any) -> None:
        self.fields.update(values)

    def save(self) -> None:
        if self.write:
            write_json_atomic(self.path, self.fields)


def run_hparams(cfg: Any, b: Any) -> dict[str, Any]:
    """A run's hyperparameters (typed Config and its Budget) as flat scalars for TensorBoard's HParams
    dashboard: `tensorboard --logdir <sweep dir>` tabulates every member against its metrics."""
    model, train, optim = cfg.model, cfg.train, cfg.optim
    out: dict[str, Any] = {
        "model": model.name,
        "n_layer": model.n_layer,
        "d_model": model.d_model,
        "n_head": model.n_head,
        "params": b.params,
        "params_nonembed": b.params_nonembed,
        "tokens": b.tokens,
        "steps": b.steps,
        "batch_size": train.batch_size,
        "seq_len": b.seq_len,
        "batch_tokens": b.batch_tokens,
        "lr": optim.lr,
        "warmup_steps": b.warmup,
        "schedule": optim.schedule,
        "weight_decay": optim.weight_decay,
        "seed": train.seed,
        "data": cfg.data.name,
        "experiment": train.experiment,
    }
    if train.tokens_per_param is not None:
        out["tokens_per_param"] = float(train.tokens_per_param)
    if cfg.sweep.compute is not None:
        out["compute"] = float(cfg.sweep.compute)
    return out


def record_failure(run_dir: Path, config: dict[str, Any], error: str) -> None:
    """A failed results.json for a run that failed before the train loop wrote one (never overwrites)."""
    run_dir = Path(run_dir)
    if (run_dir / "results.json").exists():
        return  # the loop's own record, or another run's that must survive
    train = config.get("train", {}) if isinstance(config, dict) else {}
    model = config.get("model", {}) if isinstance(config, dict) else {}
    record = RunRecord(run_dir)
    record.update(
        status="failed",
        error=error,
        experiment=_plain(train.get("experiment")),
        run_name=_plain(train.get("run_name")) or run_dir.name,
        model=_plain(model.get("name")),
        config=config,
        git_sha=git_sha(),
    )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        record.save()
    except OSError as e:
        log.error("could not write %s: %s", record.path, e)


def add_compile_ahead(run_dir: Path, waited: float, took: float) -> None:
    """A completed member's record gains the figures of the compile that ran ahead of it in a sweep."""
    fields = read_results(run_dir)
    if fields and fields.get("status") == "completed":
        fields.update(compile_ahead_wait_seconds=round(waited, 3), compile_ahead_seconds=took)
        write_json_atomic(Path(run_dir) / "results.json", fields)


def existing_run(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a completed run with this config (to skip it), or None when the run must (re)start or
    resume. A completed run with another config is refused: a completed record is final."""
    prior = read_results(run_dir)
    if not prior or prior.get("status") != "completed" or not isinstance(prior.get("config"), dict):
        return None
    diffs = config_differences(prior["config"], config)
    if not diffs:
        return prior
    raise ConfigError(
        f"{run_dir} holds a completed run with a different config ({_shown(diffs)}); a completed run is final, so "
        "delete that directory to retrain it or give this one another train.run_name."
    )


def refuse_other_run(run_dir: Path, config: dict[str, Any]) -> None:
    """An interrupted run in run_dir with a different config would be overwritten or resumed wrongly: refuse."""
    old = read_results(run_dir)
    if not old or not isinstance(old.get("config"), dict):
        return
    has_progress = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    if not (has_progress or (run_dir / "metrics.jsonl").exists() or old.get("status") == "completed"):
        return  # an attempt that never trained (e.g. a bad setting): nothing to protect
    diffs = config_differences(old["config"], config)
    if diffs:
        raise ConfigError(
            f"the run directory {run_dir} holds a run with a different config ({_shown(diffs)}); choose another "
            "hydra.run.dir or delete that directory to start over."
        )


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for settings present in both that differ, ignoring RESUME_HARMLESS and NOT_COMPUTED."""
    a, b = _flatten(old), _flatten(new)
    return [
        f"{k}: {a[k]!r} -> {b[k]!r}"
        for k in sorted(a.keys() & b.keys())
        if k not in RESUME_HARMLESS and not k.startswith(NOT_COMPUTED) and a[k] != b[k]
    ]


def _shown(diffs: list[str]) -> str:
    return ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "mesh.rules":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _plain(v: Any) -> Any:
    return None if isinstance(v, str) and "${" in v else v


def _jsonable(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
