"""Figures (PNG) for a fit: data, fitted law and its bootstrap band, frontier, IsoFLOPs, allocation, residuals.

Built on matplotlib's object API (Figure + Agg canvas), never pyplot, so importing this module changes no
global backend: it works headless, in tests, and next to a notebook's inline backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from analysis.approaches import Allocation, frontier
from analysis.fit import LawFit
from analysis.laws import Law
from analysis.results import Points

UNITS = {"N": "parameters N", "D": "training tokens D", "C": "training compute C (FLOP)"}
LOSS_LABEL = "loss (nats per token)"
BAND = (2.5, 97.5)


def make_figures(figs: dict, out: Path) -> list[str]:
    """Draw every figure that applies to this fit into `out`; returns the file names."""
    drawn: dict[str, Figure] = {}
    if figs["kind"] == "loss_law":
        law, fit, pts = figs["law"], figs["fit"], figs["points"]
        x_var = "D" if law.variables == ("D",) else "C" if law.variables == ("C",) else "N"
        if x_var != "C":
            drawn[f"loss_vs_{x_var}.png"] = loss_vs_variable(law, fit, pts, x_var)
        if pts.C is not None or figs["all_points"].C is not None:
            drawn["loss_vs_C.png"] = loss_vs_compute(law, fit, figs["all_points"], figs.get("derived"))
        drawn["residuals.png"] = residuals(law, fit, pts)
        if figs.get("derived") is not None:
            drawn["optimal_allocation.png"] = allocation_curves(figs["derived"])
    else:
        alloc = figs["alloc"]
        if alloc.groups:
            drawn["isoflop.png"] = isoflop_profiles(alloc)
        drawn["loss_vs_C.png"] = envelope_curves(alloc) if alloc.curves else allocation_losses(alloc)
        drawn["optimal_allocation.png"] = allocation_points(alloc)
    if figs.get("prediction") is not None:
        drawn["prediction.png"] = predicted_vs_actual(figs["prediction"])
    for name, fig in drawn.items():
        save(fig, out / name)
    return sorted(drawn)


def save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)


def _axes(title: str, xlabel: str, ylabel: str, logy: bool = True, size: tuple[float, float] = (6.4, 4.6)):
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
        if ylabel == LOSS_LABEL:  # losses span less than a decade: label them 2.5, 3, 4 rather than 3x10^0
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _predict_band(law: Law, fit: LawFit, logx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Best-fit loss and the bootstrap percentile band (2, n) at points logx (V, n)."""
    best = np.exp(law.log_pred(fit.theta[None, :], logx)[0][0])
    if fit.boot_theta is None or len(fit.boot_theta) < 2:
        return best, None
    boot = np.exp(law.log_pred(fit.boot_theta, logx)[0])
    return best, np.percentile(boot, BAND, axis=0)


def _scatter_by_compute(fig: Figure, ax, x: np.ndarray, loss: np.ndarray, c: np.ndarray | None, **kw):
    if c is None:
        return ax.scatter(x, loss, s=14, color="tab:blue", label="runs", **kw), None
    norm = LogNorm(c.min(), c.max() if c.max() > c.min() else c.min() * 10)
    sc = ax.scatter(x, loss, c=c, cmap="viridis", norm=norm, s=14, label="runs", **kw)
    fig.colorbar(sc, ax=ax, label=UNITS["C"])
    return sc, norm


def loss_vs_variable(law: Law, fit: LawFit, pts: Points, x_var: str) -> Figure:
    """Loss against N (or D) with the fitted law and its 95% bootstrap band."""
    fig, ax = _axes(f"{law.name}: loss vs {x_var} ({law.formula})", UNITS[x_var], LOSS_LABEL)
    x = pts.get(x_var)
    _, norm = _scatter_by_compute(fig, ax, x, pts.loss, pts.C)
    grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 80)
    if law.variables == (x_var,):
        best, band = _predict_band(law, fit, np.log(grid)[None, :])
        ax.plot(grid, best, color="black", label="fit")
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="black", alpha=0.15, label="95% bootstrap band")
    elif pts.C is not None:
        # Two-variable laws: the fitted curve along a few constant-compute slices, D = C / (6 N).
        for c in np.quantile(pts.C, [0.05, 0.35, 0.65, 0.95]):
            logx = np.stack([np.log(grid), np.log(c / (6 * grid))])
            best, band = _predict_band(law, fit, logx)
            color = "black" if norm is None else _cmap()(norm(c))
            ax.plot(grid, best, color=color, lw=1.5, label=f"fit at C = {c:.2g} FLOP")
            if band is not None:
                ax.fill_between(grid, band[0], band[1], color=color, alpha=0.15)
    ax.legend(fontsize=7)
    return fig


def loss_vs_compute(law: Law, fit: LawFit, pts: Points, derived: dict | None) -> Figure:
    """Loss against training compute; the compute frontier; the fitted L(C) or Chinchilla's L_opt(C)."""
    fig, ax = _axes("Loss vs training compute, with the compute frontier", UNITS["C"], LOSS_LABEL)
    c = pts.get("C")
    ax.scatter(c, pts.loss, s=12, color="tab:gray", alpha=0.6, label="runs")
    idx = frontier(c, pts.loss)
    ax.step(c[idx], pts.loss[idx], where="post", color="tab:red", lw=1.2, label="compute frontier (data)")
    ax.scatter(c[idx], pts.loss[idx], s=18, color="tab:red")
    if law.variables == ("C",):
        grid = np.geomspace(c.min() / 1.5, c.max() * 3, 80)
        best, band = _predict_band(law, fit, np.log(grid)[None, :])
        ax.plot(grid, best, color="black", label=f"fit: {law.formula}")
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="black", alpha=0.15, label="95% bootstrap band")
    elif derived is not None:
        ax.plot(derived["C"], derived["loss_opt"], color="black", label="fit: L(N_opt(C), D_opt(C))")
        if "loss_opt_band" in derived:
            ax.fill_between(
                derived["C"], *derived["loss_opt_band"], color="black", alpha=0.15, label="95% bootstrap band"
            )
    ax.legend(fontsize=7)
    return fig


def residuals(law: Law, fit: LawFit, pts: Points) -> Figure:
    """Log residuals of the fit against the law's first variable."""
    logx = np.log(np.stack([pts.get(v) for v in law.variables]))
    resid = law.log_pred(fit.theta[None, :], logx)[0][0] - np.log(pts.loss)
    x_var = law.variables[0]
    rms = float(np.sqrt(np.mean(resid**2)))
    fig, ax = _axes(
        f"{law.name} residuals (RMS {rms:.3g} in log loss)", UNITS[x_var], "residual log L_pred - log L", logy=False
    )
    _scatter_by_compute(fig, ax, pts.get(x_var), resid, pts.C if x_var != "C" else None)
    ax.axhline(0.0, color="black", lw=1)
    ax.axhspan(-fit.delta, fit.delta, color="tab:orange", alpha=0.2, label=f"Huber delta = {fit.delta:g}")
    ax.legend(fontsize=7)
    return fig


def allocation_curves(derived: dict) -> Figure:
    """Chinchilla approach 3: N_opt(C) and D_opt(C) implied by the fitted L(N, D), with bands."""
    fig, ax = _axes("Compute-optimal allocation implied by L(N, D)", UNITS["C"], "parameters or tokens")
    n_label, d_label = f"N_opt (parameters) ~ C^{derived['a']:.3f}", f"D_opt (tokens) ~ C^{derived['b']:.3f}"
    for q, color, label in (("N_opt", "tab:blue", n_label), ("D_opt", "tab:orange", d_label)):
        ax.plot(derived["C"], derived[q], color=color, label=label)
        if f"{q}_band" in derived:
            ax.fill_between(derived["C"], *derived[f"{q}_band"], color=color, alpha=0.2)
    ax.legend(fontsize=8, title="95% bootstrap bands shaded", title_fontsize=7)
    return fig


def isoflop_profiles(alloc: Allocation) -> Figure:
    """Loss against N at each budget, the fitted parabolas in log N and their vertices."""
    fig, ax = _axes("IsoFLOP profiles (Chinchilla approach 2)", UNITS["N"], LOSS_LABEL, logy=False)
    norm = LogNorm(min(alloc.C), max(alloc.C) if max(alloc.C) > min(alloc.C) else min(alloc.C) * 10)
    for g in alloc.groups:
        color = _cmap()(norm(g.C))
        ax.scatter(np.exp(g.log_n), g.loss, s=14, color=color)
        x = np.linspace(g.log_n.min() - 0.3, g.log_n.max() + 0.3, 60)
        ax.plot(np.exp(x), np.polyval(g.coef, x), color=color, lw=1)
        ax.plot(
            np.exp(g.log_n_opt),
            g.loss_opt,
            marker="D",
            ms=6,
            color=color,
            mfc=color if g.inside else "none",
            mec="black",
        )
    mappable = ax.scatter([], [], c=[], cmap=_cmap(), norm=norm)
    fig.colorbar(mappable, ax=ax, label=UNITS["C"])
    ax.plot([], [], "D", color="gray", mec="black", label="vertex (N_opt)")
    ax.plot([], [], "D", mfc="none", mec="black", label="vertex outside sampled sizes")
    ax.legend(fontsize=7)
    return fig


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"]


def allocation_points(alloc: Allocation) -> Figure:
    """N_opt and D_opt per budget (vertices or envelope winners) with the fitted power laws and bands."""
    title = "IsoFLOP vertices" if alloc.method == "isoflop" else "loss-envelope optima"
    fig, ax = _axes(f"Compute-optimal N and D from {title}", UNITS["C"], "parameters or tokens")
    grid = np.geomspace(alloc.C.min() / 2, alloc.C.max() * 10, 60)
    p = alloc.params
    for q, pts, color in (("N", alloc.n_opt, "tab:blue"), ("D", alloc.d_opt, "tab:orange")):
        exp_name = "a" if q == "N" else "b"
        ax.scatter(alloc.C, pts, s=18, color=color, label=f"{q}_opt per budget")
        ax.plot(grid, p[f"k_{q}"] * grid ** p[exp_name], color=color, label=f"fit {q}_opt ~ C^{p[exp_name]:.3f}")
        if alloc.boot:
            boot = alloc.boot[f"k_{q}"][:, None] * grid[None, :] ** alloc.boot[exp_name][:, None]
            ax.fill_between(grid, *np.percentile(boot, BAND, axis=0), color=color, alpha=0.2)
    ax.legend(fontsize=7, title="95% bootstrap bands shaded", title_fontsize=7)
    return fig


def envelope_curves(alloc: Allocation) -> Figure:
    """Learning curves (loss vs FLOPs) of every run and the envelope of lowest loss (approach 1)."""
    fig, ax = _axes("Loss vs training compute: learning curves and their envelope", UNITS["C"], LOSS_LABEL)
    sizes = np.array([cv.N for cv in alloc.curves])
    norm = LogNorm(sizes.min(), sizes.max() if sizes.max() > sizes.min() else sizes.min() * 10)
    for cv in alloc.curves:
        ax.plot(cv.flops, cv.loss, color=_cmap()(norm(cv.N)), lw=1, alpha=0.8)
    ax.plot(alloc.C, alloc.loss_opt, "k.-", lw=1.5, label="envelope (lowest loss per budget)")
    fig.colorbar(ax.scatter([], [], c=[], cmap=_cmap(), norm=norm), ax=ax, label=UNITS["N"])
    ax.legend(fontsize=7)
    return fig


def allocation_losses(alloc: Allocation) -> Figure:
    """Loss at the optimum of each budget against compute (vertices or frontier points)."""
    fig, ax = _axes("Lowest loss per compute budget", UNITS["C"], LOSS_LABEL)
    ax.plot(alloc.C, alloc.loss_opt, "o-", color="tab:red", label="loss at N_opt per budget")
    ax.legend(fontsize=7)
    return fig


def predicted_vs_actual(pred: dict) -> Figure:
    """Held-out runs: prediction (with its bootstrap interval) against the measured value."""
    quantity = pred.get("quantity", LOSS_LABEL)
    fig, ax = _axes(
        f"Held-out runs: predicted vs actual {quantity.split(' (')[0]}",
        f"actual {quantity}",
        f"predicted {quantity}",
        logy=quantity != LOSS_LABEL,
    )
    if quantity == LOSS_LABEL:
        ax.set_xscale("linear")
    actual, predicted = np.asarray(pred["actual"]), np.asarray(pred["predicted"])
    lo, hi = np.asarray(pred["lo"]), np.asarray(pred["hi"])
    err = np.vstack([np.clip(predicted - lo, 0, None), np.clip(hi - predicted, 0, None)])
    err = np.where(np.isfinite(err), err, 0.0)
    ax.errorbar(actual, predicted, yerr=err, fmt="o", color="tab:blue", capsize=3, label="held-out run (95% interval)")
    lims = [min(actual.min(), predicted.min()) * 0.98, max(actual.max(), predicted.max()) * 1.02]
    ax.plot(lims, lims, "k--", lw=1, label="perfect prediction")
    for x, y, name in zip(actual, predicted, pred["names"], strict=True):
        rel = (y - x) / x
        ax.annotate(f"{name}: {rel:+.1%}", (x, y), fontsize=6, xytext=(4, 4), textcoords="offset points")
    ax.legend(fontsize=7)
    return fig
