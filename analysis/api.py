"""fit_source: one call from a sweep directory or CSV to fit.json and figures (what the CLI and Makefile use).

A fit the selected data cannot support is refused: AnalysisError with the first reason (each names its cause
and fix) and a fit.json that says `"valid": false` with every reason and no parameters. With force=True the
fit is made anyway and fit.json and every figure carry the reasons.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from analysis import laws
from analysis.allocation_fit import fit_allocation
from analysis.loss_fit import fit_loss_law
from analysis.points import load_points
from analysis.results import AnalysisError
from analysis.selection import select
from analysis.story import headline

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
    min_compute: float | None = None,
    max_compute: float | None = None,
    tpp_range: tuple[float, float] | None = None,
    budgets: list[float] | None = None,
    exclude: list[str] | None = None,
    isoflop_window: float | None = None,
    keep_edge_minima: bool = False,
    force: bool = False,
) -> dict:
    """Fit `law` to a sweep directory, summary.csv or CSV; write out_dir/fit.json and figures when out_dir is given.

    Returns the fit.json content. Laws: kaplan_n, kaplan_c, kaplan_d (L(X) = (X_c/X)^alpha, or
    E + A/X^alpha with irreducible=True), kaplan_nd, chinchilla (L = E + A/N^alpha + B/D^beta),
    isoflop and envelope (Chinchilla approaches 2 and 1). With holdout_largest=k the k largest compute
    budgets are left out of a second fit whose predictions for them are checked.
    """
    if law not in ALL_LAWS:
        raise AnalysisError(f"unknown law {law!r}; choose one of {', '.join(ALL_LAWS)}.")
    if bootstrap < 0 or holdout_largest < 0:
        raise AnalysisError("--bootstrap and --holdout-largest must be zero or positive.")
    cols = {"n_column": n_column, "d_column": d_column, "c_column": c_column, "loss_column": loss_column}
    opts = dict(
        bootstrap=bootstrap,
        seed=seed,
        holdout_largest=holdout_largest,
        huber_delta=huber_delta,
        compute=[float(c) for c in compute],
        irreducible=irreducible,
        budget_tolerance=budget_tolerance,
        level=level,
        isoflop_window=isoflop_window,
        keep_edge_minima=keep_edge_minima,
        columns=cols,
    )
    chosen = dict(
        min_compute=min_compute,
        max_compute=max_compute,
        tpp_range=tpp_range,
        budgets=budgets,
        exclude=exclude,
        tol_dex=budget_tolerance,
    )
    try:
        result, figs, reasons = _fit(Path(source), law, cols, opts, chosen)
    except AnalysisError as error:  # nothing could be fitted: the out_dir still says so, not a stale result
        if out_dir is not None:
            _write_refusal({"law": law, "source": str(source), "valid": False, "reasons": [str(error)]}, Path(out_dir))
        raise
    result.update(valid=not reasons, reasons=reasons, forced=bool(reasons and force))
    result["summary"] = headline(result) if not reasons else None
    if out_dir is not None:
        _write(result, figs, Path(out_dir), reasons, force, plots, opts["compute"])
    if reasons and not force:
        raise AnalysisError(f"{reasons[0].rstrip('.')}; --force fits anyway (marked invalid).")
    return _jsonable(result)


def _fit(source: Path, law: str, cols: dict, opts: dict, chosen: dict) -> tuple[dict, dict, list[str]]:
    """Read and select the points, fit the law; every warning raised on the way lands in result["warnings"]."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if law == "envelope" and source.is_dir() and not any(v for k, v in chosen.items() if k != "tol_dex"):
            points = None  # per-step records (metrics.jsonl) of every run
        else:
            need = (
                laws.get_law(law, opts["irreducible"]).variables if law not in ("isoflop", "envelope") else ("N", "C")
            )
            points = select(load_points(source, **cols, need=need), **chosen)
        if law in ("isoflop", "envelope"):
            result, figs, reasons = fit_allocation(source, points, law, opts)
        else:
            result, figs, reasons = fit_loss_law(points, law, opts)
    result["warnings"] = _warnings(caught, result.get("warnings", []), points)
    return result, figs, reasons


def _write(result: dict, figs: dict, out: Path, reasons: list[str], force: bool, plots: bool, compute: list) -> None:
    """fit.json and the figures; a refused fit leaves only its reasons (no parameters, no figures)."""
    if reasons and not force:
        keep = ("law", "formula", "source", "n_points", "valid", "reasons", "warnings")
        _write_refusal({k: result[k] for k in keep}, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        from analysis import plots as plotting  # matplotlib only when figures are wanted

        result["figures"] = plotting.make_figures(figs, out, reasons, compute)
        result["figures_pdf"] = [name.replace(".png", ".pdf") for name in result["figures"]]
    (out / "fit.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")


def _write_refusal(refused: dict, out: Path) -> None:
    """fit.json with the reasons only; the figures of an earlier fit in out/ are removed so none outlives it."""
    out.mkdir(parents=True, exist_ok=True)
    old = out / "fit.json"
    if old.exists():
        try:
            previous = json.loads(old.read_text())
        except json.JSONDecodeError:
            previous = {}
        for name in [*(previous.get("figures") or []), *(previous.get("figures_pdf") or [])]:
            if "/" not in name:
                (out / name).unlink(missing_ok=True)
    old.write_text(json.dumps(_jsonable({**refused, "refused": True}), indent=2) + "\n")


def _warnings(caught: list, own: list[str], points) -> list[str]:
    """Every warning once, in fit.json and to the caller, keeping its category (e.g. ExtrapolationWarning)."""
    notes: dict[str, type[Warning]] = {}
    for w in caught:
        notes.setdefault(str(w.message), w.category)
    for note in [*own, *(points.notes if points is not None else [])]:
        notes.setdefault(note, UserWarning)
    for note, category in notes.items():
        warnings.warn(note, category, stacklevel=3)
    return list(notes)


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
