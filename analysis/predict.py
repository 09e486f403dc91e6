"""The prediction check: hold out the largest compute budgets, refit without them, predict what they measured.

For a loss law the K largest budgets are held out whole (every run of an IsoFLOP profile; on a ladder each run
is its own budget) and each held-out run's loss is predicted; for the IsoFLOP approach the held-out budgets'
N_opt and loss at the optimum are. The interval of a prediction is the bootstrap spread of the train-only fit
(parameter uncertainty) with the point's measured noise (its seed spread or evaluation error) added.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from analysis import approaches, laws
from analysis.fit import fit_law
from analysis.points import Points, load_points
from analysis.results import AnalysisError
from analysis.selection import select_points

# Runs whose compute differs by less than this (in decades; 4.7%) are one budget when the largest are held out:
# an IsoFLOP grid rounds each run's tokens to whole batches.
HOLDOUT_TOLERANCE_DEX = 0.02


def law_logx(law: laws.Law, points: Points) -> np.ndarray:
    """Logs of the variables a law reads, one row each (V, n)."""
    return np.log(np.stack([points.get(v) for v in law.variables]))


def largest_budgets(points: Points, k: int, tol_dex: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): the points of the k largest compute budgets (runs within tol_dex
    decades of each other share a budget) against the rest."""
    size = points.C if points.C is not None else points.N
    labels = approaches.group_budgets(size, tol_dex)
    top = np.unique(labels)[-k:] if k else np.array([], dtype=np.int64)
    held = np.isin(labels, top)
    if held.all():
        raise AnalysisError(f"--holdout-largest {k} holds out all {len(points)} points; hold out fewer.")
    return np.flatnonzero(~held), np.flatnonzero(held)


def precision_weights(points: Points) -> np.ndarray | None:
    """Inverse-variance weights of the points' mean losses (in log loss), mean 1; None without measured noise."""
    se = points.stderr
    if se is None:
        return None
    var = np.square(se / points.loss)
    return (1.0 / var) / np.mean(1.0 / var)


def interval_with_noise(boot_pred: np.ndarray, pts: Points, level: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the bootstrap predictions (R, k), widened by each point's measured noise."""
    se = pts.stderr
    if se is not None:
        rng = np.random.default_rng(seed + 1)
        boot_pred = boot_pred * np.exp(rng.normal(0.0, 1.0, boot_pred.shape) * (se / pts.loss)[None, :])
    lo, hi = np.percentile(boot_pred, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


def predict_holdout(
    points: Points,
    name: str,
    law: laws.Law,
    k: int,
    bootstrap: int,
    seed: int,
    delta: float,
    level: float,
    tol_dex: float = HOLDOUT_TOLERANCE_DEX,
) -> tuple[dict, dict]:
    """Fit without the k largest compute budgets, predict their runs, and compare with what they measured."""
    train_idx, held_idx = largest_budgets(points, k, tol_dex)
    train, held = points.subset(train_idx), points.subset(held_idx)
    used = select_points(train, name)
    if len(used) <= law.n_params:
        raise AnalysisError(
            f"with the {k} largest budgets held out, law {law.name} has only {len(used)} points left for its "
            f"{law.n_params} parameters; hold out fewer."
        )
    fit = fit_law(
        law,
        law_logx(law, used),
        used.loss,
        delta=delta,
        bootstrap=bootstrap,
        seed=seed,
        weights=precision_weights(used),
        noise=used.seed_noise,
    )
    logx_held = law_logx(law, held)
    pred = np.exp(law.log_pred(fit.theta[None, :], logx_held)[0][0])
    lo = hi = np.full(len(held), np.nan)
    if fit.boot_theta is not None and len(fit.boot_theta):
        lo, hi = interval_with_noise(np.exp(law.log_pred(fit.boot_theta, logx_held)[0]), held, level, seed)
    rel = (pred - held.loss) / held.loss
    rows = [
        {
            "run": held.names[i],
            **{v: float(getattr(held, v)[i]) for v in ("N", "D", "C") if getattr(held, v) is not None},
            "actual": float(held.loss[i]),
            "predicted": float(pred[i]),
            "interval": [float(lo[i]), float(hi[i])],
            "relative_error": float(rel[i]),
            "within_interval": bool(lo[i] <= held.loss[i] <= hi[i]),
        }
        for i in range(len(held))
    ]
    noise = "" if held.stderr is None else " and each run's measured noise"
    report = {
        "holdout_largest": k,
        "held_out_by": "compute budget (the points of the largest budgets)",
        "n_train_points": len(used),
        "train_params": fit.params,
        "points": rows,
        "mean_abs_relative_error": float(np.mean(np.abs(rel))),
        "max_abs_relative_error": float(np.max(np.abs(rel))),
        "interval": f"{level:.0%} bootstrap percentile interval of the train-only fit (parameter uncertainty{noise})",
    }
    figure = {
        "actual": held.loss,
        "predicted": pred,
        "lo": lo,
        "hi": hi,
        "names": held.names,
        "train_fit": fit,
        "held": held,
        "train": used,
    }
    return report, figure


def holdout_rows(report: dict) -> list[dict]:
    """fit.json's `holdout`: name, predicted, measured, error_pct, inside_interval per held-out quantity."""
    return [
        {
            "name": row.get("run") or f"C={row['C']:.3g} {row.get('quantity', '')}".strip(),
            "predicted": row["predicted"],
            "measured": row["actual"],
            "error_pct": 100.0 * row["relative_error"],
            "inside_interval": row["within_interval"],
            "interval": row["interval"],
        }
        for row in report["points"]
    ]


def predict_isoflop(
    source: Path,
    cols: dict,
    alloc: approaches.Allocation,
    k: int,
    bootstrap: int,
    seed: int,
    tol: float,
    level: float,
    iso: dict,
) -> tuple[dict, dict]:
    """Refit without the k largest (used) budgets and predict their N_opt and loss at the optimum."""
    used = alloc.used
    if k > len(used) - 2:
        raise AnalysisError(
            f"--holdout-largest {k} leaves fewer than 2 of the {len(used)} IsoFLOP budgets to fit; hold out fewer."
        )
    points = load_points(source, **cols, need=("N", "C"))
    held = sorted(used, key=lambda g: g.C)[-k:]
    keep = np.setdiff1d(np.arange(len(points)), np.concatenate([g.index for g in held]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already reported by the full fit
        sub = approaches.isoflop(points.subset(keep), tol_dex=tol, bootstrap=bootstrap, seed=seed, **iso)
    c = np.array([g.C for g in held])
    actual = {"N_opt": np.exp([g.log_n_opt for g in held]), "loss_opt": np.array([g.loss_opt for g in held])}
    predicted = {"N_opt": sub.predict_n(c), "loss_opt": sub.predict_loss(c)}
    rows, bands = [], {}
    for q in ("N_opt", "loss_opt"):
        lo = hi = np.full(k, np.nan)
        if sub.boot:
            if q == "N_opt":
                boot = sub.boot["k_N"][:, None] * c[None, :] ** sub.boot["a"][:, None]
            else:
                boot = sub.boot["k_L"][:, None] * c[None, :] ** (-sub.boot["gamma"][:, None])
            lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
        bands[q] = (lo, hi)
        rel = (predicted[q] - actual[q]) / actual[q]
        for i in range(k):
            rows.append(
                {
                    "C": float(c[i]),
                    "quantity": q,
                    "actual": float(actual[q][i]),
                    "predicted": float(predicted[q][i]),
                    "interval": [float(lo[i]), float(hi[i])],
                    "relative_error": float(rel[i]),
                    "within_interval": bool(lo[i] <= actual[q][i] <= hi[i]),
                }
            )
    errors = np.array([r["relative_error"] for r in rows])
    report = {
        "holdout_largest": k,
        "held_out_by": "IsoFLOP budget",
        "train_params": sub.params,
        "points": rows,
        "mean_abs_relative_error": float(np.mean(np.abs(errors))),
        "max_abs_relative_error": float(np.max(np.abs(errors))),
    }
    n_rows = [r for r in rows if r["quantity"] == "N_opt"]
    figure = {
        "actual": actual["N_opt"],
        "predicted": predicted["N_opt"],
        "lo": bands["N_opt"][0],
        "hi": bands["N_opt"][1],
        "names": [f"C={x:.3g}" for x in c],
        "quantity": "N_opt (parameters)",
        "train_alloc": sub,
        "rows": n_rows,
    }
    return report, figure
