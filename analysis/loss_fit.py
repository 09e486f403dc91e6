"""Fitting a loss law (chinchilla, kaplan_*): the selected points, the guards, the weighted fit with its
bootstrap, the derived allocation, the prediction check; returns fit.json's content and what the figures need."""

from __future__ import annotations

import numpy as np

from analysis import guards, laws
from analysis.fit import LawFit, fit_law, summarize_samples
from analysis.points import Points
from analysis.predict import holdout_rows, law_logx, precision_weights, predict_holdout
from analysis.results import AnalysisError
from analysis.selection import LAW_SELECTION, select_points


def fit_loss_law(points: Points, name: str, opts: dict) -> tuple[dict, dict, list[str]]:
    """(fit.json content, figure inputs, reasons the result is not valid)."""
    law = laws.get_law(name, opts["irreducible"])
    check_count(law, len(points), points.source)
    reasons = guards.variation_reasons(law.name, law.variables, points)  # before the law picks its frontier
    used = select_points(points, name)
    if reasons and len(used) <= law.n_params:
        raise AnalysisError(reasons[0])
    check_count(law, len(used), points.source)
    reasons += guards.data_reasons(law.name, law.variables, law.n_params, used, check_variation=not reasons)
    weights = precision_weights(used)
    logx = law_logx(law, used)
    fit = fit_law(
        law,
        logx,
        used.loss,
        delta=opts["huber_delta"],
        bootstrap=opts["bootstrap"],
        seed=opts["seed"],
        weights=weights,
        noise=used.seed_noise,
    )
    resid = law.log_pred(fit.theta[None, :], logx)[0][0] - np.log(used.loss)
    n_boot = fit.boot_info.get("n", 0) if fit.boot_info else 0
    reasons += guards.fit_reasons(law.name, fit.params, used, resid, n_boot, fit.boot_info.get("n_converged", 0))
    result = _law_result(fit, used, points, name, opts["compute"], opts["level"])
    result["residual_rms"] = float(np.sqrt(np.mean(resid**2)))
    result["checks"] = guards.applied_checks(fit.params, used, n_boot, reasons)
    result["noise"] = noise_summary(used)
    figs = {"kind": "loss_law", "law": law, "fit": fit, "points": used, "all_points": points, "derived": None}
    if name == "chinchilla":
        figs["derived"] = chinchilla_curve(fit, used, opts["compute"])
    if opts["holdout_largest"] > 0:
        result["prediction"], figs["prediction"] = predict_holdout(
            points,
            name,
            law,
            opts["holdout_largest"],
            opts["bootstrap"],
            opts["seed"],
            opts["huber_delta"],
            opts["level"],
        )
        result["holdout"] = holdout_rows(result["prediction"])
    return result, figs, reasons


def check_count(law: laws.Law, n: int, source: str) -> None:
    if n <= law.n_params:
        raise AnalysisError(
            f"law {law.name} has {law.n_params} parameters but {source} gives only {n} usable "
            f"points; a fit needs at least {law.n_params + 2}."
        )


def noise_summary(pts: Points) -> dict:
    """What was measured about the points' noise: seeds per configuration and their spread."""
    std = pts.seed_std
    return {
        "configurations": len(pts),
        "runs": int(pts.n_seeds.sum()),
        "configurations_with_seeds": int((pts.n_seeds > 1).sum()),
        "pooled_seed_std": pts.pooled_seed_std,
        "seed_std": {name: float(s) for name, s in zip(pts.names, std, strict=True) if np.isfinite(s)},
        "log_noise": guards.noise_level(pts),
        "weighted_by": "inverse variance of each point's mean loss" if pts.stderr is not None else "equal weights",
    }


def _law_result(fit: LawFit, used: Points, points: Points, name: str, compute: list[float], level: float) -> dict:
    law = fit.law
    samples = fit.boot_params()
    derived, boot_derived = {}, {}
    if name == "chinchilla":
        derived = {
            k: float(v)
            for k, v in laws.chinchilla_derived({k: np.array(v) for k, v in fit.params.items()}, compute).items()
        }
        boot_derived = laws.chinchilla_derived(samples, compute) if samples else {}
    elif "E" in fit.params:  # L(X) = E + A / X^alpha: the share of the reducible loss one doubling of X removes
        alpha = next(k for k in fit.params if k.startswith("alpha"))
        derived = {"reduction_per_doubling": float(1 - 2 ** -fit.params[alpha])}
        boot_derived = {"reduction_per_doubling": 1 - 2 ** -samples[alpha]} if samples else {}
    stderr, intervals = summarize_samples({**samples, **boot_derived}, level)
    return {
        "law": name,
        "formula": law.formula,
        "source": points.source,
        "n_points": len(used),
        "n_rows": len(points),
        "data_selection": LAW_SELECTION.get(name, "all points"),
        "columns": points.columns,
        "params": fit.params,
        "stderr": stderr,
        "intervals": intervals,
        "interval_level": level,
        "objective": {
            "loss": "huber",
            "delta": fit.delta,
            "reduction": "sum over points" + (", each weighted by its precision" if used.stderr is not None else ""),
            "residual": "log L_pred - log L, L_pred via log-sum-exp",
            "value": fit.objective,
        },
        "derived": derived,
        "compute": compute,
        "ranges": {
            v: [float(used.get(v).min()), float(used.get(v).max())]
            for v in ("N", "D", "C")
            if getattr(used, v) is not None
        },
        "fit": {
            "optimizer": "batched L-BFGS (numpy, Armijo backtracking, memory 10)",
            "n_starts": fit.n_starts,
            "n_converged": fit.n_converged,
            "selection": "lowest objective among converged starts",
            "start_grid": law.grid_axes,
            "theta": dict(zip(law.theta_names, map(float, fit.theta), strict=True)),
            "seconds": round(fit.seconds, 3),
        },
        "bootstrap": fit.boot_info or None,
        "prediction": None,
        "holdout": [],
        "failed_runs": points.failed,
        "warnings": list(fit.warnings),
    }


def chinchilla_curve(fit: LawFit, used: Points, compute: list[float]) -> dict:
    """N_opt, D_opt and L_opt with bootstrap bands from the data's compute up to the compute where the tokens per
    parameter are quoted (--compute), for the allocation figures."""
    c = np.geomspace(used.get("C").min(), max([used.get("C").max() * 10, *compute]), 80)
    curve = {"C": c, **laws.chinchilla_allocation(fit.params, c)}
    samples = fit.boot_params()
    if samples:
        boot = laws.chinchilla_allocation({k: v[:, None] for k, v in samples.items()}, c[None, :])
        for q in ("N_opt", "D_opt", "loss_opt"):
            curve[f"{q}_band"] = np.nanpercentile(boot[q], [2.5, 97.5], axis=0)
    return curve
