"""results.json: the run's final record (fields fixed by DESIGN.md "Records")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

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
    # that ran while the previous member trained, and how long that compile took (research/sweep.py)
    "compile_ahead_wait_seconds", "compile_ahead_seconds",
)  # fmt: skip


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
    path = run_dir / "results.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _jsonable(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
