"""The prediction check: fit without the largest runs, predict them, compare with what they measured."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from analysis import approaches, laws
from analysis.approaches import select_points
from analysis.fit import fit_law
from analysis.results import AnalysisError, Points, load_points


def law_logx(law: laws.Law, points: Points) -> np.ndarray:
    """Logs of the variables a law reads, one row each (V, n)."""
    return np.log(np.stack([points.get(v) for v in law.variables]))


def predict_holdout(
    points: Points, name: str, law: laws.Law, k: int, bootstrap: int, seed: int, delta: float, level: float
) -> tuple[dict, dict]:
    """Fit without the k largest-compute points, predict them, and compare with what they measured."""
    # Largest = most training compute; near-ties (within 1%: one IsoFLOP budget, tokens rounded to whole
    # batches) go to the larger model.
    size = points.C if points.C is not None else points.get(law.variables[0])
    budget = approaches.group_budgets(size, tol_dex=0.005)
    order = np.lexsort((points.N, budget)) if points.N is not None else np.argsort(size, kind="stable")
    if k >= len(points):
        raise AnalysisError(f"--holdout-largest {k} holds out all {len(points)} points; hold out fewer.")
    train, held = points.subset(order[:-k]), points.subset(order[-k:])
    used = select_points(train, name)
    if len(used) <= law.n_params:
        raise AnalysisError(
            f"with the {k} largest held out, law {law.name} has only {len(used)} points left for "
            f"its {law.n_params} parameters; hold out fewer."
        )
    fit = fit_law(law, law_logx(law, used), used.loss, delta=delta, bootstrap=bootstrap, seed=seed)
    logx_held = law_logx(law, held)
    pred = np.exp(law.log_pred(fit.theta[None, :], logx_held)[0][0])
    lo = hi = np.full(k, np.nan)
    if fit.boot_theta is not None and len(fit.boot_theta):
        boot_pred = np.exp(law.log_pred(fit.boot_theta, logx_held)[0])
        lo, hi = np.percentile(boot_pred, [50 * (1 - level), 50 * (1 + level)], axis=0)
    rel = (pred - held.loss) / held.loss
    rows = []
    for i in range(k):
        rows.append(
            {
                "run": held.names[i],
                **{v: float(getattr(held, v)[i]) for v in ("N", "D", "C") if getattr(held, v) is not None},
                "actual": float(held.loss[i]),
                "predicted": float(pred[i]),
                "interval": [float(lo[i]), float(hi[i])],
                "relative_error": float(rel[i]),
                "within_interval": bool(lo[i] <= held.loss[i] <= hi[i]),
            }
        )
    report = {
        "holdout_largest": k,
        "held_out_by": "compute C" if points.C is not None else law.variables[0],
        "n_train_points": len(used),
        "train_params": fit.params,
        "points": rows,
        "mean_abs_relative_error": float(np.mean(np.abs(rel))),
        "max_abs_relative_error": float(np.max(np.abs(rel))),
        "interval": f"{level:.0%} bootstrap percentile interval of the fitted mean (parameter uncertainty)",
    }
    return report, {
        "actual": held.loss,
        "predicted": pred,
        "lo": lo,
        "hi": hi,
        "names": held.names,
        "train_fit": fit,
        "held": held,
    }


def predict_isoflop(
    source: Path, cols: dict, alloc: approaches.Allocation, k: int, bootstrap: int, seed: int, tol: float, level: float
) -> tuple[dict, dict]:
    """Refit without the k largest budgets and predict their N_opt."""
    if k > len(alloc.groups) - 2:
        raise AnalysisError(
            f"--holdout-largest {k} leaves fewer than 2 of the {len(alloc.groups)} IsoFLOP budgets "
            "to fit; hold out fewer."
        )
    points = load_points(source, **cols, need=("N", "C"))
    held = sorted(alloc.groups, key=lambda g: g.C)[-k:]
    drop = np.concatenate([g.index for g in held])
    keep = np.setdiff1d(np.arange(len(points)), drop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already reported by the full fit
        sub = approaches.isoflop(points.subset(keep), tol_dex=tol, bootstrap=bootstrap, seed=seed)
    c = np.array([g.C for g in held])
    actual = np.exp([g.log_n_opt for g in held])
    pred = sub.predict_n(c)
    lo = hi = np.full(k, np.nan)
    if sub.boot:
        boot_pred = sub.boot["k_N"][:, None] * c[None, :] ** sub.boot["a"][:, None]
        lo, hi = np.percentile(boot_pred, [50 * (1 - level), 50 * (1 + level)], axis=0)
    rel = (pred - actual) / actual
    rows = [
        {
            "C": float(c[i]),
            "quantity": "N_opt",
            "actual": float(actual[i]),
            "predicted": float(pred[i]),
            "interval": [float(lo[i]), float(hi[i])],
            "relative_error": float(rel[i]),
            "within_interval": bool(lo[i] <= actual[i] <= hi[i]),
        }
        for i in range(k)
    ]
    report = {
        "holdout_largest": k,
        "held_out_by": "IsoFLOP budget",
        "train_params": sub.params,
        "points": rows,
        "mean_abs_relative_error": float(np.mean(np.abs(rel))),
        "max_abs_relative_error": float(np.max(np.abs(rel))),
    }
    return report, {
        "actual": actual,
        "predicted": pred,
        "lo": lo,
        "hi": hi,
        "names": [f"C={x:.3g}" for x in c],
        "quantity": "N_opt (parameters)",
    }
