"""Figures of a loss-law fit: loss against N (or D) and against C with the fitted law and its band, the train-only
fit extrapolated to the held-out points, the residuals against the measured noise, the implied allocation."""

from __future__ import annotations

import numpy as np

from analysis.fit import LawFit
from analysis.laws import Law
from analysis.plots.style import BAND, HELD_OUT, LABEL, axes, cmap, compute_norm, error_bars, reference_lines, sci
from analysis.points import Points
from analysis.selection import frontier

FORMULA = {
    "chinchilla": r"$L(N, D) = E + A\,N^{-\alpha} + B\,D^{-\beta}$",
    "kaplan_nd": r"$L(N, D) = [(N_c/N)^{\alpha_N/\alpha_D} + D_c/D]^{\alpha_D}$",
}


def formula(law: Law) -> str:
    if law.name in FORMULA:
        return FORMULA[law.name]
    v = law.variables[0]
    if "E" in law.param_names:
        return rf"$L({v}) = E + A\,{v}^{{-\alpha_{v}}}$"
    return rf"$L({v}) = ({v}_c/{v})^{{\alpha_{v}}}$"


def predict_band(law: Law, fit: LawFit, logx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Best-fit loss and the bootstrap percentile band (2, n) at points logx (V, n)."""
    best = np.exp(law.log_pred(fit.theta[None, :], logx)[0][0])
    if fit.boot_theta is None or len(fit.boot_theta) < 2:
        return best, None
    return best, np.percentile(np.exp(law.log_pred(fit.boot_theta, logx)[0]), BAND, axis=0)


def _curve(ax, law, fit, logx, x, color, label, band_label=None, **kw) -> None:
    best, band = predict_band(law, fit, logx)
    ax.plot(x, best, color=color, label=label, **kw)
    if band is not None:
        ax.fill_between(x, band[0], band[1], color=color, alpha=0.15, lw=0, label=band_label)


def _held(prediction: dict | None) -> tuple[Points | None, LawFit | None]:
    return (prediction["held"], prediction["train_fit"]) if prediction else (None, None)


def loss_vs_variable(law: Law, fit: LawFit, pts: Points, x_var: str, prediction: dict | None) -> object:
    """Loss against N (or D): the points (seed means with their standard errors), the fitted law and its band, and
    with a prediction check the train-only fit extrapolated to the held-out points."""
    fig, ax = axes(f"{law.name}: loss vs ${x_var}$, {formula(law)}", LABEL[x_var], LABEL["loss"])
    held, train_fit = _held(prediction)
    x = pts.get(x_var)
    span = np.concatenate([x, held.get(x_var)]) if held is not None else x
    grid = np.geomspace(span.min() / 1.5, span.max() * 1.5, 120)
    if law.variables == (x_var,):
        error_bars(ax, x, pts.loss, pts.stderr, color="tab:blue", s=22, label="runs (seed mean)", zorder=3)
        _curve(ax, law, fit, np.log(grid)[None, :], grid, "black", "fit, all points", "95% bootstrap band")
        if train_fit is not None:
            _curve(ax, law, train_fit, np.log(grid)[None, :], grid, "tab:red", "fit without the held-out", ls="--")
        if "E" in fit.params:
            ax.axhline(fit.params["E"], color="0.4", ls=":", lw=1, label=rf"floor $E = {fit.params['E']:.3f}$")
    else:
        norm = compute_norm(pts.get("C"))
        sc = ax.scatter(x, pts.loss, c=pts.get("C"), cmap=cmap(), norm=norm, s=22, zorder=3, label="runs")
        fig.colorbar(sc, ax=ax, label=LABEL["C"])
        other = "D" if x_var == "N" else "N"
        _two_variable_curves(ax, law, fit, pts, x_var, other, grid, norm)
        if held is not None and train_fit is not None:
            for c in np.unique(held.get("C")):
                part = within(grid, c, pts.get(other))
                best, _ = predict_band(law, train_fit, _slice_logx(x_var, other, part, "C", c))
                ax.plot(
                    part, best, color="tab:red", ls="--", lw=1.2, label=rf"fit without the held-out, $C = {sci(c)}$"
                )
    if held is not None:
        error_bars(
            ax, held.get(x_var), held.loss, held.stderr, color="tab:red", label="held out (measured)", **HELD_OUT
        )
    ax.legend(fontsize=7)
    return fig


def _slice_logx(x_var: str, other: str, grid: np.ndarray, fixed: str, value: float) -> np.ndarray:
    """logx rows (N, D) along `grid` of x_var with `fixed` (the other variable, or C = 6 N D) held at value."""
    partner = value / (6.0 * grid) if fixed == "C" else np.full(grid.shape, value)
    rows = {x_var: np.log(grid), other: np.log(partner)}
    return np.stack([rows["N"], rows["D"]])


def _two_variable_curves(ax, law: Law, fit: LawFit, pts: Points, x_var: str, other: str, grid, norm) -> None:
    """The fitted L(N, D) along x_var: at each sampled value of the other variable when the sweep is a grid (at
    most 6 of them), else along constant-compute slices, which follow IsoFLOP profiles."""
    levels = np.unique(pts.get(other))
    if len(levels) <= 6:
        for level in levels:
            color = cmap()(norm(6 * level * np.median(pts.get(x_var))))
            _curve(
                ax,
                law,
                fit,
                _slice_logx(x_var, other, grid, other, level),
                grid,
                color,
                rf"fit at ${other} = {sci(level)}$",
                lw=1.2,
            )
        return
    for c in np.quantile(pts.get("C"), [0.05, 0.35, 0.65, 0.95]):
        part = within(grid, c, pts.get(other))
        _curve(
            ax,
            law,
            fit,
            _slice_logx(x_var, other, part, "C", c),
            part,
            cmap()(norm(c)),
            rf"fit at $C = {sci(c)}$",
            lw=1.2,
        )


def within(grid: np.ndarray, c: float, other_values: np.ndarray) -> np.ndarray:
    """The part of a constant-compute slice whose other variable (C / 6x) stays within 2x of the sampled range."""
    partner = c / (6.0 * grid)
    keep = (partner >= other_values.min() / 2) & (partner <= other_values.max() * 2)
    return grid[keep] if keep.sum() >= 2 else grid


def loss_vs_compute(law: Law, fit: LawFit, pts: Points, derived: dict | None, prediction: dict | None) -> object:
    """Loss against compute: the runs, their frontier, and the fitted law along C (L(C), L_opt(C), or L(N) at the
    sweep's single D mapped through C = 6 N D)."""
    fig, ax = axes("Loss vs training compute", LABEL["C"], LABEL["loss"])
    c = pts.get("C")
    ax.scatter(c, pts.loss, s=14, color="0.55", alpha=0.8, label="runs", zorder=3)
    idx = frontier(c, pts.loss)
    ax.step(c[idx], pts.loss[idx], where="post", color="tab:red", lw=1, alpha=0.7, label="compute frontier (data)")
    held, train_fit = _held(prediction)
    span = np.concatenate([c, held.get("C")]) if held is not None else c
    grid = np.geomspace(span.min() / 1.5, span.max() * 3, 120)
    if law.variables == ("C",):
        _curve(ax, law, fit, np.log(grid)[None, :], grid, "black", f"fit: {formula(law)}", "95% bootstrap band")
    elif derived is not None:
        ax.plot(derived["C"], derived["loss_opt"], color="black", label=r"fit: $L(N_{opt}(C), D_{opt}(C))$")
        if "loss_opt_band" in derived:
            ax.fill_between(
                derived["C"], *derived["loss_opt_band"], color="black", alpha=0.15, lw=0, label="95% bootstrap band"
            )
    elif law.variables == ("N",) and pts.D is not None and pts.D.max() <= 1.1 * pts.D.min():
        d = float(np.median(pts.D))
        _curve(
            ax,
            law,
            fit,
            np.log(grid / (6 * d))[None, :],
            grid,
            "black",
            rf"fit: {formula(law)} at $D = {sci(d)}$",
            "95% bootstrap band",
        )
        if train_fit is not None:
            _curve(
                ax,
                law,
                train_fit,
                np.log(grid / (6 * d))[None, :],
                grid,
                "tab:red",
                "fit without the held-out",
                ls="--",
            )
    if held is not None:
        ax.scatter(held.get("C"), held.loss, label="held out (measured)", **HELD_OUT)
    ax.legend(fontsize=7)
    return fig


def residuals(law: Law, fit: LawFit, pts: Points) -> object:
    """Log residuals against the law's first variable, with each point's measured noise and the Huber band."""
    logx = np.log(np.stack([pts.get(v) for v in law.variables]))
    resid = law.log_pred(fit.theta[None, :], logx)[0][0] - np.log(pts.loss)
    x_var = law.variables[0]
    rms = float(np.sqrt(np.mean(resid**2)))
    fig, ax = axes(
        f"{law.name} residuals (RMS {rms:.3g} in $\\log L$)",
        LABEL[x_var],
        r"residual $\log L_{pred} - \log L$",
        logy=False,
    )
    se = pts.stderr
    error_bars(
        ax,
        pts.get(x_var),
        resid,
        None if se is None else se / pts.loss,
        color="tab:blue",
        s=18,
        label="runs (seed mean, standard error)",
        zorder=3,
    )
    ax.axhline(0.0, color="black", lw=1)
    ax.axhspan(-fit.delta, fit.delta, color="tab:orange", alpha=0.2, label=rf"Huber $\delta = {fit.delta:g}$")
    ax.legend(fontsize=7)
    return fig


def allocation_curves(derived: dict, pts: Points) -> object:
    """Approach 3: N_opt(C) and D_opt(C) implied by the fitted L(N, D), with bands, the runs' (C, N) and (C, D),
    and the published allocations over the whole range."""
    fig, ax = axes(r"Compute-optimal allocation implied by $L(N, D)$", LABEL["C"], r"parameters $N$ or tokens $D$")
    c = derived["C"]
    for q, color, sym in (("N_opt", "tab:blue", "N"), ("D_opt", "tab:orange", "D")):
        exponent = derived["a"] if q == "N_opt" else derived["b"]
        ax.plot(c, derived[q], color=color, lw=2, label=rf"fit: ${sym}_{{opt}} \propto C^{{{exponent:.3f}}}$")
        if f"{q}_band" in derived:
            ax.fill_between(c, *derived[f"{q}_band"], color=color, alpha=0.2, lw=0)
        ax.scatter(pts.get("C"), pts.get(sym), s=10, color=color, alpha=0.5, label=f"runs' {sym}")
    reference_lines(ax, c)
    ax.legend(fontsize=6, title="95% bootstrap bands shaded", title_fontsize=6, ncols=2)
    return fig


def predicted_vs_actual(pred: dict) -> object:
    """Held-out points: the train-only prediction (with its interval) against what was measured."""
    quantity = pred.get("quantity", "loss")
    is_loss = quantity == "loss"
    fig, ax = axes(
        f"Held-out: predicted vs measured {quantity.split(' (')[0]}",
        f"measured {quantity}",
        f"predicted {quantity}",
        logy=not is_loss,
    )
    if is_loss:
        ax.set_xscale("linear")
    actual, predicted = np.asarray(pred["actual"]), np.asarray(pred["predicted"])
    lo, hi = np.asarray(pred["lo"]), np.asarray(pred["hi"])
    err = np.vstack([np.clip(predicted - lo, 0, None), np.clip(hi - predicted, 0, None)])
    ax.errorbar(
        actual,
        predicted,
        yerr=np.where(np.isfinite(err), err, 0.0),
        fmt="D",
        color="tab:red",
        mfc="white",
        capsize=3,
        label="held out (95% prediction interval)",
    )
    pad = 0.02 * (max(actual.max(), predicted.max()) - min(actual.min(), predicted.min()) or actual.max())
    lims = [
        min(actual.min(), predicted.min(), np.nanmin(lo)) - pad,
        max(actual.max(), predicted.max(), np.nanmax(hi)) + pad,
    ]
    ax.plot(lims, lims, "k--", lw=1, label="perfect prediction")
    for x, y, name in zip(actual, predicted, pred["names"], strict=True):
        ax.annotate(f"{name}: {(y - x) / x:+.2%}", (x, y), fontsize=6, xytext=(4, 4), textcoords="offset points")
    ax.legend(fontsize=7)
    return fig
