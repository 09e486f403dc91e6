"""fit_source: one call from a sweep directory or CSV to fit.json and figures (what the CLI and Makefile use)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from analysis import approaches, laws
from analysis.approaches import SELECTION, select_points
from analysis.fit import LawFit, fit_law, summarize_samples
from analysis.predict import law_logx, predict_holdout, predict_isoflop
from analysis.results import AnalysisError, Points, load_curves, load_points

ALL_LAWS = ("kaplan_n", "kaplan_c", "kaplan_d", "kaplan_nd", "chinchilla", "isoflop", "envelope")
DEFAULT_COMPUTE = (5.88e23,)  # Chinchilla's training compute, where the paper quotes ~20 tokens/parameter


def fit_source(
    source: str | Path,
    law: str = "chinchilla",
    out_dir: str | Path | None = None,
    *,
    bootstrap: int = 4000,
    seed: int = 0,
    holdout_largest: int = 0,
    n_column: str | None = None,
    d_column: str | None = None,
    c_column: str | None = None,
    loss_column: str | None = None,
    huber_delta: float = 1e-3,
    compute: tuple[float, ...] | list[float] = DEFAULT_COMPUTE,
    irreducible: bool = False,
    budget_tolerance: float = 0.05,
    level: float = 0.95,
    plots: bool = True,
) -> dict:
    """Fit `law` to a sweep directory or CSV; write out_dir/fit.json and PNG figures when out_dir is given.

    Returns the fit.json content. Laws: kaplan_n, kaplan_c, kaplan_d (L(X) = (X_c/X)^alpha, or
    E + A/X^alpha with irreducible=True), kaplan_nd, chinchilla (L = E + A/N^alpha + B/D^beta),
    isoflop and envelope (Chinchilla approaches 2 and 1). With holdout_largest=k the k largest-compute
    points (IsoFLOP: budgets) are left out of a second fit whose predictions for them are checked.
    """
    if law not in ALL_LAWS:
        raise AnalysisError(f"unknown law {law!r}; choose one of {', '.join(ALL_LAWS)}.")
    if bootstrap < 0 or holdout_largest < 0:
        raise AnalysisError("--bootstrap and --holdout-largest must be zero or positive.")
    cols = {"n_column": n_column, "d_column": d_column, "c_column": c_column, "loss_column": loss_column}
    compute = [float(c) for c in compute]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if law in ("isoflop", "envelope"):
            result, figs = _fit_allocation(
                Path(source), law, cols, bootstrap, seed, holdout_largest, compute, budget_tolerance, level
            )
        else:
            result, figs = _fit_loss_law(
                Path(source), law, cols, bootstrap, seed, holdout_largest, compute, huber_delta, irreducible, level
            )
    # Every warning once, in fit.json and to the caller, keeping its category (e.g. ExtrapolationWarning).
    notes: dict[str, type[Warning]] = {}
    for w in caught:
        notes.setdefault(str(w.message), w.category)
    for note in result.get("warnings", []):
        notes.setdefault(note, UserWarning)
    result["warnings"] = list(notes)
    for note, category in notes.items():
        warnings.warn(note, category, stacklevel=2)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            from analysis import plots as plotting  # matplotlib only when figures are wanted

            result["figures"] = plotting.make_figures(figs, out)
        (out / "fit.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    return _jsonable(result)


def _fit_loss_law(
    source: Path,
    name: str,
    cols: dict,
    bootstrap: int,
    seed: int,
    holdout: int,
    compute: list[float],
    delta: float,
    irreducible: bool,
    level: float,
) -> tuple[dict, dict]:
    law = laws.get_law(name, irreducible)
    points = load_points(source, **cols, need=law.variables)
    used = select_points(points, name)
    _check_count(law, len(used), points.source)
    fit = fit_law(law, law_logx(law, used), used.loss, delta=delta, bootstrap=bootstrap, seed=seed)
    result = _law_result(fit, used, points, name, compute, level)
    figs = {"kind": "loss_law", "law": law, "fit": fit, "points": used, "all_points": points, "derived": None}
    if name == "chinchilla":
        figs["derived"] = _chinchilla_curve(fit, used)
    if holdout > 0:
        result["prediction"], figs["prediction"] = predict_holdout(
            points, name, law, holdout, bootstrap, seed, delta, level
        )
    return result, figs


def _check_count(law: laws.Law, n: int, source: str) -> None:
    if n <= law.n_params:
        raise AnalysisError(
            f"law {law.name} has {law.n_params} parameters but {source} gives only {n} usable "
            f"points; a fit needs at least {law.n_params + 1}."
        )


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
    stderr, intervals = summarize_samples({**samples, **boot_derived}, level)
    return {
        "law": name,
        "formula": law.formula,
        "source": points.source,
        "n_points": len(used),
        "n_rows": len(points),
        "data_selection": SELECTION.get(name, "all points"),
        "columns": points.columns,
        "params": fit.params,
        "stderr": stderr,
        "intervals": intervals,
        "interval_level": level,
        "objective": {
            "loss": "huber",
            "delta": fit.delta,
            "reduction": "sum over points",
            "residual": "log L_pred - log L, L_pred via log-sum-exp",
            "value": fit.objective,
        },
        "derived": derived,
        "compute": compute,
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
        "failed_runs": points.failed,
        "warnings": list(fit.warnings),
    }


def _chinchilla_curve(fit: LawFit, used: Points) -> dict:
    """N_opt, D_opt and L_opt along a compute range with bootstrap bands, for the allocation figures."""
    c = np.geomspace(used.get("C").min(), used.get("C").max() * 10, 60)
    curve = {"C": c, **laws.chinchilla_allocation(fit.params, c)}
    samples = fit.boot_params()
    if samples:
        boot = laws.chinchilla_allocation({k: v[:, None] for k, v in samples.items()}, c[None, :])
        for q in ("N_opt", "D_opt", "loss_opt"):
            curve[f"{q}_band"] = np.nanpercentile(boot[q], [2.5, 97.5], axis=0)
    return curve


def _fit_allocation(
    source: Path,
    name: str,
    cols: dict,
    bootstrap: int,
    seed: int,
    holdout: int,
    compute: list[float],
    tol: float,
    level: float,
) -> tuple[dict, dict]:
    failed: list[dict] = []
    if name == "envelope" and holdout:
        raise AnalysisError("--holdout-largest applies to the loss laws and isoflop, not to envelope; drop it.")
    if name == "envelope" and source.is_dir():
        curves, failed = load_curves(source, cols["n_column"])
        alloc = approaches.envelope(curves, bootstrap=bootstrap, seed=seed)
        n_rows, columns = len(curves), {"N": cols["n_column"] or "params_nonembed", "C": "flops", "loss": "loss"}
    else:
        points = load_points(source, **cols, need=("N", "C"))
        failed, n_rows, columns = points.failed, len(points), points.columns
        if name == "envelope":
            alloc = approaches.envelope_from_points(points, bootstrap=bootstrap, seed=seed)
        else:
            alloc = approaches.isoflop(points, tol_dex=tol, bootstrap=bootstrap, seed=seed)
    params = alloc.params
    derived = {k: float(v) for k, v in approaches.allocation_derived(params, compute).items()}
    boot = {**alloc.boot, **approaches.allocation_derived(alloc.boot, compute)} if alloc.boot else {}
    stderr, intervals = summarize_samples(boot, level)
    budgets = [
        {"C": float(c), "N_opt": float(n), "D_opt": float(d), "loss_opt": float(lo)}
        for c, n, d, lo in zip(alloc.C, alloc.n_opt, alloc.d_opt, alloc.loss_opt, strict=True)
    ]
    for row, g in zip(budgets, alloc.groups, strict=False):
        row.update({"n_points": len(g.loss), "vertex_inside_sampled_sizes": g.inside})
    result = {
        "law": name,
        "formula": "N_opt = k_N C^a, D_opt = k_D C^b (least squares in log-log)",
        "source": str(source),
        "n_points": len(alloc.C),
        "n_rows": n_rows,
        "columns": columns,
        "data_selection": alloc.records if name == "isoflop" else f"loss envelope over budgets, from {alloc.records}",
        "params": params,
        "stderr": stderr,
        "intervals": intervals,
        "interval_level": level,
        "objective": {"loss": "sum of squared log residuals of N_opt", "value": alloc.rss},
        "derived": derived,
        "compute": compute,
        "budgets": budgets,
        "fit": {"budget_tolerance_dex": tol} if name == "isoflop" else {},
        "bootstrap": {
            "n": bootstrap,
            "seed": seed,
            "n_converged": len(alloc.boot.get("a", [])),
            "resampling": "points within each IsoFLOP profile" if name == "isoflop" else "envelope points",
        }
        if bootstrap
        else None,
        "prediction": None,
        "failed_runs": failed,
        "warnings": list(alloc.warnings),
    }
    figs = {"kind": "allocation", "alloc": alloc}
    if holdout:
        result["prediction"], figs["prediction"] = predict_isoflop(
            source, cols, alloc, holdout, bootstrap, seed, tol, level
        )
    return result, figs


def _jsonable(obj: object) -> object:
    """Plain JSON types; NaN and infinities become null (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj
