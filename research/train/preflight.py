"""Checks that run before anything is written or compiled: the run directory and the command line.

Each failure is one sentence naming the setting and the fix (ConfigError).
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from research.config import ConfigError, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from research.train import records

# Settings that may change between a run and its resumption without changing what it computes
# (or that the user must be able to change to get past a failure: the bad-step policy).
RESUME_HARMLESS = frozenset({
    "output", "data.cache_dir", "train.progress", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints", "train.device_peak_flops",
    "train.nan_policy", "train.max_bad_steps", "train.max_rollbacks", "train.spike_factor", "train.spike_window",
    "train.resume_from", "train.allow_external_resume", "train.experiment", "train.run_name", "train.debug_step_delay",
})  # fmt: skip

_SCHEMAS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "mesh": MeshConfig}


def check_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """The run directory is writable, and does not hold a different run we would overwrite or resume."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"the run directory {run_dir} cannot be written ({e.strerror or e}); choose a writable hydra.run.dir "
            "(or fix the permissions there)."
        ) from e
    old = records.read_results(run_dir)
    has_progress = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    has_progress = has_progress or (run_dir / "metrics.jsonl").exists()
    if not old or not isinstance(old.get("config"), dict):
        return
    if not (has_progress or old.get("status") == "completed"):
        return  # an attempt that never trained (e.g. a bad setting): nothing to protect
    diffs = config_differences(old["config"], config)
    if diffs:
        shown = ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise ConfigError(
            f"the run directory {run_dir} holds a run with a different config ({shown}); choose another "
            "hydra.run.dir or delete that directory to start over."
        )


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for settings present in both that differ, ignoring RESUME_HARMLESS."""
    a, b = _flatten(old), _flatten(new)
    return [
        f"{k}: {a[k]!r} -> {b[k]!r}"
        for k in sorted(a.keys() & b.keys())
        if k not in RESUME_HARMLESS and not k.startswith("plan.") and a[k] != b[k]  # plan.* never affects training
    ]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "mesh.rules":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# Command line (before Hydra composes: its own errors are several lines and a hint)


def check_cli(argv: list[str], conf_dir: Path) -> str | None:
    """The message for the first unknown config name or misspelt setting on the command line, else None."""
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        raw_key, value = arg.split("=", 1)
        key = raw_key.lstrip("+~")
        if key.startswith("hydra") or "/" in key or "@" in key:
            continue
        if key in groups:
            if "(" in value or any(ch in value for ch in "*?[]{}$"):
                continue  # a sweep function or interpolation: Hydra's business
            options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
            for v in (x.strip() for x in value.split(",")):
                if v and v not in options:
                    close = difflib.get_close_matches(v, options, n=1)
                    hint = f"did you mean {close[0]}? " if close else ""
                    return (
                        f"{key}={v} is not a config in conf/{key}; {hint}choose one of {', '.join(options)}."
                    )
        elif "." in key and not raw_key.startswith("+"):
            group, name = key.split(".")[:2]
            schema = _SCHEMAS.get(group)
            if schema is None:
                continue
            names = [f.name for f in fields(schema)]
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {group}.{close[0]}?)" if close else ""
                return f"{group}.{name} is not a setting of {group}{hint}; fix the name, or add a new key with +{key}=..."
    return None


def cli_or_exit(argv: list[str] | None = None, conf_dir: Path | None = None) -> None:
    """For entry points: print the one-sentence error and exit 2 before Hydra runs."""
    conf_dir = conf_dir or Path(__file__).resolve().parents[2] / "conf"
    message = check_cli(sys.argv[1:] if argv is None else argv, conf_dir)
    if message:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
