"""Reading run records (results.json, metrics.jsonl, summary.csv; see docs/architecture.md "Records") and plain CSVs.

Everything a fit reads goes through here, so malformed input fails in one place with one clear sentence.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = "results.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.csv"
# Column order of summary.csv: the results.json field order first, then any other scalar fields.
SUMMARY_FIELDS = (
    "run_dir",
    "status",
    "experiment",
    "run_name",
    "config_id",
    "seed",
    "model",
    "params",
    "params_nonembed",
    "params_embed",
    "tokens",
    "steps",
    "batch_tokens",
    "seq_len",
    "flops",
    "flops_model",
    "final_train_loss",
    "final_val_loss",
    "val_bpb",
    "tokens_per_second",
    "mfu",
    "wall_seconds",
    "startup_seconds",
    "compile_seconds",
    "compile_ahead_wait_seconds",
    "compile_ahead_seconds",
    "device",
    "n_devices",
    "git_sha",
    "error",
    "config_seeds",
    "config_val_loss_mean",
    "config_val_loss_std",
)
_SKIP_DIRS = {"checkpoints", "tb", ".hydra", "__pycache__"}  # never hold results.json; can be large
SWEEP_DEFAULTS = {"N": "params_nonembed", "D": "tokens", "C": "flops", "loss": "final_val_loss"}
# Config keys that tell seeds of one configuration apart without changing what it is, and the sections that
# never change what a run computes (the same list as research/train/records.py's NOT_COMPUTED).
SEED_KEYS = ("train.seed", "train.run_name")
NOT_COMPUTED = ("output", "plan.", "sweep.", "data.workers", "data.executor", "data.slurm.", "data.on_bad_record")


class AnalysisError(ValueError):
    """A problem with the user's input; the message is one sentence naming the problem and the fix."""


@dataclass
class Curve:
    """Per-step record of one run (metrics.jsonl): what the envelope approach reads."""

    name: str
    N: float
    flops: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    lr: np.ndarray | None = None  # the learning rate at each row, when the records have it


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run directories under a sweep: every directory holding results.json or metrics.jsonl, recursively."""
    runs = []
    for root, dirs, files in os.walk(sweep_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        if RESULTS in files or METRICS in files:
            runs.append(Path(root))
    return runs


def read_results(sweep_dir: str | Path) -> list[dict]:
    """results.json of every run under a sweep, each with `run_dir`; unreadable or missing ones get a status."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AnalysisError(f"sweep directory {sweep_dir} does not exist; pass a directory of runs or a CSV file.")
    records = []
    for run in find_runs(sweep_dir):
        rel = str(run.relative_to(sweep_dir)) if run != sweep_dir else "."
        path = run / RESULTS
        if not path.exists():
            records.append(
                {
                    "run_dir": rel,
                    "run_name": run.name,
                    "status": "no_results",
                    "error": "metrics.jsonl but no results.json (still running or killed)",
                }
            )
            continue
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            records.append({"run_dir": rel, "run_name": run.name, "status": "unreadable", "error": str(exc)})
            continue
        rec.setdefault("run_name", run.name)
        rec["run_dir"] = rel
        records.append(rec)
    return records


def summary_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """The scalar fields of every record, and the column order for summary.csv: config_id and seed name the
    configuration and the seed of each run (rows with one config_id are seeds of one configuration), and
    config_seeds, config_val_loss_mean and config_val_loss_std aggregate that configuration's completed seeds."""
    rows = [{k: v for k, v in rec.items() if v is None or isinstance(v, str | int | float | bool)} for rec in records]
    for row, rec in zip(rows, records, strict=True):
        config = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        row["config_id"] = config_id(rec)
        row["seed"] = (config.get("train") or {}).get("seed") if isinstance(config.get("train"), dict) else None
    _add_config_means(rows)
    present = set().union(*rows) if rows else set()
    columns = [c for c in SUMMARY_FIELDS if c in present] + sorted(present - set(SUMMARY_FIELDS))
    return columns, rows


def _add_config_means(rows: list[dict]) -> None:
    """Per configuration, on each of its rows: how many completed seeds, their mean and std validation loss."""
    losses: dict[str, list[float]] = {}
    for row in rows:
        loss = row.get("final_val_loss")
        if row.get("status") == "completed" and isinstance(loss, int | float) and math.isfinite(loss):
            losses.setdefault(row["config_id"], []).append(float(loss))
    for row in rows:
        values = losses.get(row["config_id"], [])
        row["config_seeds"] = len(values)
        row["config_val_loss_mean"] = float(np.mean(values)) if values else None
        row["config_val_loss_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None


def write_summary(sweep_dir: str | Path) -> tuple[Path, list[str], list[dict]]:
    """Write SWEEP_DIR/summary.csv (one row per run) and return its path, columns and rows."""
    records = read_results(sweep_dir)
    columns, rows = summary_rows(records)
    path = Path(sweep_dir) / SUMMARY
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path, columns, rows


def csv_table(path: Path) -> dict[str, list]:
    """A CSV file as columns of raw strings (header names stripped)."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise AnalysisError(f"CSV file {path} is empty; it needs a header row and one row per run.")
        rows = list(reader)
    return {name.strip(): [row.get(name) for row in rows] for name in reader.fieldnames}


def config_key(record: dict) -> str:
    """What a run computes, its seed aside: runs with equal keys (the resolved config but its seed, and the
    sizes the record reports) are seeds of one configuration."""
    config = record.get("config")
    if not isinstance(config, dict) or not config:
        return f"run:{record.get('run_dir')}"
    flat = {k: v for k, v in _flatten(config).items() if k not in SEED_KEYS and not k.startswith(NOT_COMPUTED)}
    sizes = {k: record.get(k) for k in ("params", "params_nonembed", "tokens", "flops")}
    return json.dumps([flat, sizes], sort_keys=True, default=str)


def config_id(record: dict) -> str:
    """A short, stable name of a run's configuration, its seed aside (summary.csv's config_id)."""
    return hashlib.sha256(config_key(record).encode()).hexdigest()[:12]


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Training rows of metrics.jsonl (those with a `loss`): step, tokens, flops, loss, lr, sorted by step."""
    path = Path(run_dir) / METRICS
    rows = []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    for k, (lineno, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            if k == len(lines) - 1:
                continue  # a last line cut by a crash mid-write (the writer tolerates it too)
            raise AnalysisError(f"{path} line {lineno} is not valid JSON; fix or delete that line.") from None
        if row.get("loss") is not None and row.get("flops") is not None:
            rows.append(row)
    rows.sort(key=lambda r: r.get("step", 0))
    keys = ("step", "tokens", "flops", "loss", "lr")
    return {k: np.array([math.nan if r.get(k) is None else float(r[k]) for r in rows]) for k in keys}


def load_curves(sweep_dir: str | Path, n_column: str | None = None) -> tuple[list[Curve], list[dict]]:
    """Per-step loss curves of the completed runs of a sweep, each with its N (params_nonembed by default)."""
    n_column = n_column or SWEEP_DEFAULTS["N"]
    records = read_results(sweep_dir)
    curves, failed = [], []
    for rec in records:
        if rec.get("status") != "completed":
            failed.append({"run_dir": rec["run_dir"], "status": rec.get("status"), "error": rec.get("error")})
            continue
        run = Path(sweep_dir) / rec["run_dir"]
        if not (run / METRICS).exists():
            raise AnalysisError(f"run {run} has no {METRICS}; the envelope approach needs per-step records.")
        n = rec.get(n_column)
        if not isinstance(n, int | float) or not n > 0:
            raise AnalysisError(f"run {run} has no positive {n_column!r} in {RESULTS}; choose --n-column params.")
        m = read_metrics(run)
        ok = np.isfinite(m["flops"]) & np.isfinite(m["loss"]) & (m["flops"] > 0) & (m["loss"] > 0)
        if ok.sum() < 2:
            raise AnalysisError(
                f"run {run} has fewer than 2 usable rows (flops, loss) in {METRICS}; log more often or exclude the run."
            )
        lr = m["lr"][ok] if np.isfinite(m["lr"][ok]).all() else None
        curves.append(Curve(rec["run_dir"], float(n), m["flops"][ok], m["tokens"][ok], m["loss"][ok], lr))
    if not curves:
        raise AnalysisError(f"{sweep_dir} holds no completed runs with per-step records; there is nothing to fit.")
    return curves, failed
