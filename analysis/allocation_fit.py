"""Fitting the compute-optimal allocation directly (Chinchilla approaches 1 and 2: envelope, isoflop): the
optima per budget, the power laws through them, the guards, the prediction check."""

from __future__ import annotations

import math
from pathlib import Path

from analysis import approaches, guards
from analysis.fit import summarize_samples
from analysis.points import Points
from analysis.predict import holdout_rows, predict_isoflop
from analysis.results import AnalysisError, load_curves


def fit_allocation(source: Path, points: Points | None, name: str, opts: dict) -> tuple[dict, dict, list[str]]:
    """(fit.json content, figure inputs, reasons the result is not valid)."""
    failed: list[dict] = []
    bootstrap, seed, holdout = opts["bootstrap"], opts["seed"], opts["holdout_largest"]
    if name == "envelope" and holdout:
        raise AnalysisError("--holdout-largest applies to the loss laws and isoflop, not to envelope; drop it.")
    iso = {"keep_edge_minima": opts["keep_edge_minima"], "window": opts["isoflop_window"]}
    if name == "envelope" and points is None:
        curves, failed = load_curves(source, opts["columns"]["n_column"])
        alloc = approaches.envelope(curves, bootstrap=bootstrap, seed=seed)
        n_rows = len(curves)
        columns = {"N": opts["columns"]["n_column"] or "params_nonembed", "C": "flops", "loss": "loss"}
    else:
        failed, n_rows, columns = points.failed, len(points), points.columns
        if name == "envelope":
            alloc = approaches.envelope_from_points(points, bootstrap=bootstrap, seed=seed)
        else:
            alloc = approaches.isoflop(points, tol_dex=opts["budget_tolerance"], bootstrap=bootstrap, seed=seed, **iso)
    params = alloc.params
    compute = opts["compute"]
    derived = {k: float(v) for k, v in approaches.allocation_derived(params, compute).items()}
    derived.update(gamma=float(alloc.gamma), k_L=float(math.exp(alloc.log_k_l)))
    boot = {**alloc.boot, **approaches.allocation_derived(alloc.boot, compute)} if alloc.boot else {}
    stderr, intervals = summarize_samples(boot, opts["level"])
    n_converged = len(alloc.boot.get("a", [])) if alloc.boot else 0
    reasons = guards.allocation_reasons(params, bootstrap, n_converged)
    result = {
        "law": name,
        "formula": "N_opt = k_N C^a, D_opt = k_D C^b, L_opt = k_L C^-gamma (least squares in log-log)",
        "source": str(source),
        "n_points": len(alloc.C),
        "n_rows": n_rows,
        "columns": columns,
        "data_selection": alloc.records if name == "isoflop" else f"loss envelope over budgets, from {alloc.records}",
        "params": params,
        "stderr": stderr,
        "intervals": intervals,
        "interval_level": opts["level"],
        "objective": {"loss": "sum of squared log residuals of N_opt", "value": alloc.rss},
        "derived": derived,
        "compute": compute,
        "budgets": (rows := _budget_rows(alloc)),
        "edge_minima": [row for row in rows if not row["vertex_inside_sampled_sizes"]],
        "fit": {"budget_tolerance_dex": opts["budget_tolerance"], **iso} if name == "isoflop" else {},
        "bootstrap": {
            "n": bootstrap,
            "seed": seed,
            "n_converged": n_converged,
            "resampling": "points within each IsoFLOP profile" if name == "isoflop" else "envelope points",
        }
        if bootstrap
        else None,
        "prediction": None,
        "holdout": [],
        "failed_runs": failed,
        "warnings": list(alloc.warnings),
    }
    result["checks"] = [
        {
            "check": "sign",
            "what": "0 < a, b < 1: N_opt and D_opt both grow with compute",
            "status": "failed" if any("outside (0, 1)" in r for r in reasons) else "passed",
        },
        {
            "check": "edge_minima",
            "what": "IsoFLOP minima inside their sampled sizes (the others left out)",
            "status": f"{len(result['edge_minima'])} left out" if result["edge_minima"] else "passed",
        },
        *[c for c in guards.applied_checks({}, None, bootstrap, reasons) if c["check"] == "bootstrap"],
    ]
    figs = {"kind": "allocation", "alloc": alloc}
    if holdout:
        result["prediction"], figs["prediction"] = predict_isoflop(
            source, opts["columns"], alloc, holdout, bootstrap, seed, opts["budget_tolerance"], opts["level"], iso
        )
        result["holdout"] = holdout_rows(result["prediction"])
    return result, figs, reasons


def _budget_rows(alloc: approaches.Allocation) -> list[dict]:
    if not alloc.groups:  # the envelope: one row per budget it was read at
        return [
            {
                "C": float(c),
                "N_opt": float(n),
                "D_opt": float(d),
                "loss_opt": float(lo),
                "used": True,
                "vertex_inside_sampled_sizes": True,
            }
            for c, n, d, lo in zip(alloc.C, alloc.n_opt, alloc.d_opt, alloc.loss_opt, strict=True)
        ]
    return [
        {
            "C": float(g.C),
            "N_opt": float(math.exp(g.log_n_opt)),
            "D_opt": float(g.C / (6 * math.exp(g.log_n_opt))),
            "loss_opt": float(g.loss_opt),
            "n_points": len(g.loss),
            "n_fitted": int(g.fitted.sum()) if g.fitted is not None else len(g.loss),
            "vertex_inside_sampled_sizes": g.inside,
            "used": g.used,
        }
        for g in alloc.groups
    ]
