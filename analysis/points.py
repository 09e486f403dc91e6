"""The points a law is fitted to: one per configuration (its seeds averaged), read from a sweep directory, the
project's summary.csv or any CSV, then narrowed by the user's selection.

    pts = load_points(source, need=("N", "D"))              # sweep dir, summary.csv or CSV
    pts = select(pts, min_compute=1e18, tpp_range=(5, 100)) # --min-compute, --tpp-range, --budgets, --exclude

A configuration run with several seeds (sweep.seeds) is one point: its mean loss, the seeds' spread
(`seed_std`) and the standard error of that mean (`stderr`), which weights the fit; the bootstrap resamples
its seeds (`replicates`). Where only one seed ran, the standard error is the pooled seed spread of the other
configurations, else the evaluation's own standard error when the records carry it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.results import (
    METRICS,
    SUMMARY,
    SWEEP_DEFAULTS,
    AnalysisError,
    config_key,
    csv_table,
    find_runs,
    read_results,
)

CSV_DEFAULTS = {"N": "N", "D": "D", "C": "C", "loss": "loss"}
C_TOLERANCE = 0.10  # C vs 6 N D beyond this relative difference is reported


@dataclass
class Points:
    """One row per configuration: the variables a law reads, the loss (mean over seeds) and its noise."""

    loss: np.ndarray
    N: np.ndarray | None = None
    D: np.ndarray | None = None
    C: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    source: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # variable -> column / field it came from
    failed: list[dict] = field(default_factory=list)  # runs that did not complete (sweep sources)
    replicates: list[np.ndarray] | None = None  # per point: the loss of each seed
    eval_stderr: np.ndarray | None = None  # per point: the evaluation's standard error of the loss, if recorded
    notes: list[str] = field(default_factory=list)  # what reading and selecting did (into fit.json's warnings)

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    def get(self, var: str) -> np.ndarray:
        value = getattr(self, var)
        if value is None:
            raise AnalysisError(f"{self.source} has no {var} values; name its column with --{var.lower()}-column.")
        return value

    @property
    def n_seeds(self) -> np.ndarray:
        if self.replicates is None:
            return np.ones(len(self), dtype=np.int64)
        return np.array([len(r) for r in self.replicates])

    @property
    def seed_std(self) -> np.ndarray:
        """Each configuration's standard deviation across seeds (NaN with one seed)."""
        if self.replicates is None:
            return np.full(len(self), np.nan)
        return np.array([np.std(r, ddof=1) if len(r) > 1 else np.nan for r in self.replicates])

    @property
    def pooled_seed_std(self) -> float:
        """The seed spread pooled over configurations with two or more seeds (NaN when none has)."""
        if self.replicates is None:
            return math.nan
        dev = [np.sum((r - r.mean()) ** 2) for r in self.replicates if len(r) > 1]
        dof = sum(len(r) - 1 for r in self.replicates if len(r) > 1)
        return float(np.sqrt(np.sum(dev) / dof)) if dof else math.nan

    @property
    def stderr(self) -> np.ndarray | None:
        """Standard error of each point's mean loss: the seed spread pooled over the configurations that ran
        several seeds, over the square root of the point's own seed count (a configuration's own spread from a
        handful of seeds is too uncertain to weight by); else the evaluation's standard error; None when
        nothing measured the noise."""
        pooled = self.pooled_seed_std
        if math.isfinite(pooled):
            return pooled / np.sqrt(self.n_seeds)
        if self.eval_stderr is not None and np.isfinite(self.eval_stderr).all():
            return self.eval_stderr
        return None

    @property
    def seed_noise(self) -> np.ndarray | None:
        """Each point's standard error in log loss when seeds measured it (any configuration with two or more),
        else None: what the parametric bootstrap redraws from."""
        if not math.isfinite(self.pooled_seed_std):
            return None
        return self.stderr / self.loss

    def subset(self, idx: np.ndarray) -> Points:
        idx = np.asarray(idx, dtype=np.int64)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        reps = None if self.replicates is None else [self.replicates[i] for i in idx]
        return Points(
            self.loss[idx],
            pick(self.N),
            pick(self.D),
            pick(self.C),
            [self.names[i] for i in idx],
            self.source,
            dict(self.columns),
            list(self.failed),
            reps,
            pick(self.eval_stderr),
            list(self.notes),
        )


def load_points(
    source: str | Path,
    *,
    n_column: str | None = None,
    d_column: str | None = None,
    c_column: str | None = None,
    loss_column: str | None = None,
    need: tuple[str, ...] = ("N", "D"),
) -> Points:
    """Points from a sweep directory (completed runs), the project's summary.csv (file, or a folder holding only
    it) or a CSV file, checked for the variables in `need`.

    For a sweep or its summary.csv, N is `params_nonembed` unless n_column says `params`; D is `tokens`, C is
    `flops` and the loss is `final_val_loss`. For another CSV the columns default to N, D (or tokens), C and
    loss. Seeds of one configuration are averaged into one point.
    """
    source = Path(source)
    names = {"N": n_column, "D": d_column, "C": c_column, "loss": loss_column}
    if source.is_dir() and not find_runs(source) and (source / SUMMARY).is_file():
        source = source / SUMMARY
    if source.is_dir():
        names = {k: v or SWEEP_DEFAULTS[k] for k, v in names.items()}
        table, labels, failed, groups = _sweep_table(source)
    elif source.is_file():
        table = csv_table(source)
        project = {"status", "final_val_loss", "params_nonembed"} <= set(table)
        defaults = (
            SWEEP_DEFAULTS
            if project
            else {**CSV_DEFAULTS, "D": "tokens" if "tokens" in table and "D" not in table else "D"}
        )
        names = {k: v or defaults[k] for k, v in names.items()}
        table, labels, failed, groups = _csv_rows(table, project)
    else:
        raise AnalysisError(f"source {source} does not exist; pass a sweep directory or a CSV file.")
    n_rows = len(labels)
    if n_rows == 0:
        detail = f" ({len(failed)} runs failed)" if failed else ""
        raise AnalysisError(f"{source} holds no completed runs or data rows{detail}; there is nothing to fit.")
    values = {var: _numeric(table[names[var]], names[var], labels, source) for var in names if names[var] in table}
    if "loss" not in values:
        raise AnalysisError(
            f"{source} has no loss column {names['loss']!r} (found: {', '.join(sorted(table))}); "
            "name it with --loss-column."
        )
    pts = _aggregate(values, labels, groups, table.get("val_loss_stderr"), str(source), names, failed)
    for var in need:
        if getattr(pts, var) is None:
            raise AnalysisError(
                f"{source} has no column {names[var]!r} for {var} and it cannot be derived from the "
                f"others (found: {', '.join(sorted(table))}); name it with --{var.lower()}-column."
            )
    return pts


def _aggregate(
    values: dict,
    labels: list[str],
    groups: list[str],
    eval_se: list | None,
    source: str,
    names: dict,
    failed: list[dict],
) -> Points:
    """One point per group (configuration), in the order the groups first appear; derive D or C from C = 6 N D."""
    order = list(dict.fromkeys(groups))
    members = [[i for i, g in enumerate(groups) if g == key] for key in order]
    first = [m[0] for m in members]
    loss = np.array([values["loss"][m].mean() for m in members])
    reps = [values["loss"][m] for m in members]
    var = {k: values[k][first] for k in ("N", "D", "C") if k in values}
    se = None
    if eval_se is not None:
        raw = np.array([math.nan if v in (None, "") else float(v) for v in eval_se])
        se = np.array([np.mean(raw[m]) / np.sqrt(len(m)) for m in members])
    columns = {k: names[k] for k in values}
    n, d, c = var.get("N"), var.get("D"), var.get("C")
    notes: list[str] = []
    if d is None and n is not None and c is not None:
        d, columns["D"] = c / (6.0 * n), f"{names['C']} / (6 {names['N']})"
    elif c is None and n is not None and d is not None:
        c, columns["C"] = 6.0 * n * d, f"6 {names['N']} {names['D']}"
    elif n is None and d is not None and c is not None:
        n, columns["N"] = c / (6.0 * d), f"{names['C']} / (6 {names['D']})"
    elif n is not None and d is not None and c is not None:
        rel = c / (6.0 * n * d) - 1.0
        off = np.abs(rel) > C_TOLERANCE
        if off.any():
            notes.append(
                f"C differs from 6 N D by more than {C_TOLERANCE:.0%} at {int(off.sum())} of {len(c)} points (up to "
                f"{rel[np.argmax(np.abs(rel))]:+.0%}): {names['C']} and {names['N']} may count different parameters "
                "(non-embedding N, all-parameter C); check --n-column and --c-column."
            )
    names_out = [labels[i] for i in first]
    multi = any(len(m) > 1 for m in members)
    return Points(loss, n, d, c, names_out, source, columns, failed, reps if multi else None, se, notes)


def _sweep_table(sweep_dir: Path) -> tuple[dict[str, list], list[str], list[dict], list[str]]:
    records = read_results(sweep_dir)
    done = [r for r in records if r.get("status") == "completed"]
    failed = [
        {"run_dir": r["run_dir"], "run_name": r.get("run_name"), "status": r.get("status"), "error": r.get("error")}
        for r in records
        if r.get("status") != "completed"
    ]
    for r in done:
        if r.get("val_loss_stderr") is None:
            r["val_loss_stderr"] = _last_eval_stderr(sweep_dir / r["run_dir"])
    keys = set().union(*done) if done else set()
    table = {k: [r.get(k) for r in done] for k in keys}
    return table, [r["run_dir"] for r in done], failed, [config_key(r) for r in done]


def _last_eval_stderr(run: Path) -> float | None:
    """The standard error of the last evaluation in metrics.jsonl (records written before results.json had it)."""
    try:
        lines = (run / METRICS).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("val_loss_stderr") is not None:
            return float(row["val_loss_stderr"])
    return None


def _csv_rows(table: dict[str, list], project: bool) -> tuple[dict[str, list], list[str], list[dict], list[str]]:
    """The rows to fit (a project summary.csv: completed runs only) and their groups (config_id, or the variables
    of rows that name a seed)."""
    n = len(next(iter(table.values()))) if table else 0
    keep = list(range(n))
    failed: list[dict] = []
    if project:
        keep = [i for i in range(n) if table["status"][i] == "completed"]
        failed = [
            {"run_dir": (table.get("run_dir") or [None] * n)[i], "status": table["status"][i]}
            for i in range(n)
            if i not in keep
        ]
    rows = {k: [v[i] for i in keep] for k, v in table.items()}
    if project and "run_dir" in rows:
        labels = [str(x) for x in rows["run_dir"]]
    else:
        labels = [f"row {i + 2}" for i in keep]  # CSV row numbers as a spreadsheet shows them
    if "config_id" in rows:
        groups = [str(x) for x in rows["config_id"]]
    elif "seed" in rows:
        others = [k for k in rows if k not in ("seed", "loss", "run_dir", "run_name")]
        groups = [json.dumps([rows[k][i] for k in sorted(others)]) for i in range(len(keep))]
    else:
        groups = labels
    return rows, labels, failed, groups


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
