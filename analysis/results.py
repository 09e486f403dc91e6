"""Reading run records (results.json, metrics.jsonl, summary.csv; see docs/architecture.md "Records") and plain CSVs.

Everything a fit reads goes through here, so malformed input fails in one place with one clear sentence.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
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
)
_SKIP_DIRS = {"checkpoints", "tb", ".hydra", "__pycache__"}  # never hold results.json; can be large
CSV_DEFAULTS = {"N": "N", "D": "D", "C": "C", "loss": "loss"}
SWEEP_DEFAULTS = {"N": "params_nonembed", "D": "tokens", "C": "flops", "loss": "final_val_loss"}


class AnalysisError(ValueError):
    """A problem with the user's input; the message is one sentence naming the problem and the fix."""


@dataclass
class Points:
    """One row per run (or CSV row): the variables a law reads. D and C are derived via C = 6 N D when absent."""

    loss: np.ndarray
    N: np.ndarray | None = None
    D: np.ndarray | None = None
    C: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    source: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # variable -> column / field it came from
    failed: list[dict] = field(default_factory=list)  # runs that did not complete (sweep sources)

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    def get(self, var: str) -> np.ndarray:
        value = getattr(self, var)
        if value is None:
            raise AnalysisError(f"{self.source} has no {var} values; name its column with --{var.lower()}-column.")
        return value

    def subset(self, idx: np.ndarray) -> Points:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return Points(
            self.loss[idx],
            pick(self.N),
            pick(self.D),
            pick(self.C),
            [self.names[i] for i in idx],
            self.source,
            dict(self.columns),
            list(self.failed),
        )


@dataclass
class Curve:
    """Per-step record of one run (metrics.jsonl): what the envelope approach reads."""

    name: str
    N: float
    flops: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray


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
    """The scalar fields of every record, and the column order for summary.csv."""
    rows = [{k: v for k, v in rec.items() if v is None or isinstance(v, str | int | float | bool)} for rec in records]
    present = set().union(*rows) if rows else set()
    columns = [c for c in SUMMARY_FIELDS if c in present] + sorted(present - set(SUMMARY_FIELDS))
    return columns, rows


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


def load_points(
    source: str | Path,
    *,
    n_column: str | None = None,
    d_column: str | None = None,
    c_column: str | None = None,
    loss_column: str | None = None,
    need: tuple[str, ...] = ("N", "D"),
) -> Points:
    """Points from a sweep directory (completed runs) or a CSV file, checked for the variables in `need`.

    For a sweep, N is `params_nonembed` unless n_column says `params`; D is `tokens`, C is `flops` and the
    loss is `final_val_loss`. For a CSV the columns default to N, D, C and loss.
    """
    source = Path(source)
    names = {"N": n_column, "D": d_column, "C": c_column, "loss": loss_column}
    if source.is_dir():
        names = {k: v or SWEEP_DEFAULTS[k] for k, v in names.items()}
        table, labels, failed = _sweep_table(source)
    elif source.is_file():
        names = {k: v or CSV_DEFAULTS[k] for k, v in names.items()}
        table, labels, failed = _csv_table(source), None, []
    else:
        raise AnalysisError(f"source {source} does not exist; pass a sweep directory or a CSV file.")
    n_rows = len(next(iter(table.values()))) if table else 0
    labels = labels or [f"row {i + 2}" for i in range(n_rows)]  # CSV row numbers as a spreadsheet shows them
    if n_rows == 0:
        detail = f" ({len(failed)} runs failed)" if failed else ""
        raise AnalysisError(f"{source} holds no completed runs or data rows{detail}; there is nothing to fit.")
    values = {}
    for var in ("N", "D", "C", "loss"):
        col = names[var]
        if col in table:
            values[var] = _numeric(table[col], col, labels, source)
    if "loss" not in values:
        raise AnalysisError(
            f"{source} has no loss column {names['loss']!r} (found: {', '.join(sorted(table))}); "
            "name it with --loss-column."
        )
    n, d, c = values.get("N"), values.get("D"), values.get("C")
    # Derive what C = 6 N D allows; record where each variable came from.
    columns = {k: names[k] for k in values}
    if d is None and n is not None and c is not None:
        d, columns["D"] = c / (6.0 * n), f"{names['C']} / (6 {names['N']})"
    if c is None and n is not None and d is not None:
        c, columns["C"] = 6.0 * n * d, f"6 {names['N']} {names['D']}"
    if n is None and d is not None and c is not None:
        n, columns["N"] = c / (6.0 * d), f"{names['C']} / (6 {names['D']})"
    pts = Points(values["loss"], n, d, c, labels, str(source), columns, failed)
    for var in need:
        if getattr(pts, var) is None:
            raise AnalysisError(
                f"{source} has no column {names[var]!r} for {var} and it cannot be derived from the "
                f"others (found: {', '.join(sorted(table))}); name it with --{var.lower()}-column."
            )
    return pts


def _sweep_table(sweep_dir: Path) -> tuple[dict[str, list], list[str], list[dict]]:
    records = read_results(sweep_dir)
    done = [r for r in records if r.get("status") == "completed"]
    failed = [
        {"run_dir": r["run_dir"], "run_name": r.get("run_name"), "status": r.get("status"), "error": r.get("error")}
        for r in records
        if r.get("status") != "completed"
    ]
    keys = set().union(*done) if done else set()
    table = {k: [r.get(k) for r in done] for k in keys}
    return table, [r["run_dir"] for r in done], failed


def _csv_table(path: Path) -> dict[str, list]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise AnalysisError(f"CSV file {path} is empty; it needs a header row and one row per run.")
        rows = list(reader)
    return {name.strip(): [row.get(name) for row in rows] for name in reader.fieldnames}


def _numeric(raw: list, column: str, labels: list[str], source: Path) -> np.ndarray:
    out = np.empty(len(raw))
    for i, value in enumerate(raw):
        try:
            out[i] = float(value) if value not in (None, "") else math.nan
        except (TypeError, ValueError):
            out[i] = math.nan
        if not math.isfinite(out[i]):
            raise AnalysisError(
                f"{column!r} is missing, NaN or not a number at {labels[i]} of {source} "
                f"(value {value!r}); fix or remove that row."
            )
        if out[i] <= 0:
            raise AnalysisError(
                f"{column!r} is {value!r} at {labels[i]} of {source}, but scaling laws need "
                "positive values; fix or remove that row."
            )
    return out


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Training rows of metrics.jsonl (those with a `loss`): step, tokens, flops, loss, sorted by step."""
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
    keys = ("step", "tokens", "flops", "loss")
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
        curves.append(Curve(rec["run_dir"], float(n), m["flops"][ok], m["tokens"][ok], m["loss"][ok]))
    if not curves:
        raise AnalysisError(f"{sweep_dir} holds no completed runs with per-step records; there is nothing to fit.")
    return curves, failed
