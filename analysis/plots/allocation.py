"""Figures of the compute-optimal allocation fitted directly (IsoFLOP profiles, the loss envelope): the profiles and
their parabolas inside the fitting window, L_opt(C) through the optima, and N_opt(C), D_opt(C) against the
published allocations."""

from __future__ import annotations

import numpy as np

from analysis.approaches import Allocation
from analysis.plots.style import BAND, HELD_OUT, LABEL, axes, cmap, compute_norm, reference_lines, sci


def isoflop_profiles(alloc: Allocation) -> object:
    """Loss against N at each budget, each budget's parabola in log N over the sizes it was fitted to, labeled by
    budget; vertices filled where they enter N_opt(C), open where they lie outside the sampled sizes."""
    fig, ax = axes("IsoFLOP profiles (Chinchilla approach 2)", LABEL["N"], LABEL["loss"], logy=False)
    norm = compute_norm(np.array([g.C for g in alloc.groups]))
    for g in alloc.groups:
        color = cmap()(norm(g.C))
        fitted = g.fitted if g.fitted is not None else np.ones(len(g.loss), dtype=bool)
        ax.scatter(np.exp(g.log_n[fitted]), g.loss[fitted], s=16, color=color, zorder=3)
        if (~fitted).any():
            ax.scatter(np.exp(g.log_n[~fitted]), g.loss[~fitted], s=16, facecolor="none", edgecolor=color, zorder=3)
        x = np.linspace(g.log_n[fitted].min(), g.log_n[fitted].max(), 80)
        ax.plot(np.exp(x), np.polyval(g.coef, x), color=color, lw=1.2, label=rf"$C = {sci(g.C)}$")
        ax.plot(
            np.exp(g.log_n_opt),
            g.loss_opt,
            marker="D",
            ms=6,
            color=color,
            mfc=color if g.used else "white",
            mec="black",
            zorder=4,
        )
    ax.plot([], [], "D", color="0.5", mec="black", label=r"minimum ($N_{opt}$)")
    if not all(g.used for g in alloc.groups):
        ax.plot([], [], "D", mfc="white", mec="black", label="minimum outside its sizes (left out)")
    ax.legend(fontsize=7, ncols=2)
    return fig


def _grid(alloc: Allocation, compute: list[float]) -> np.ndarray:
    hi = max([alloc.C.max() * 10, *compute]) if compute else alloc.C.max() * 10
    return np.geomspace(alloc.C.min() / 2, hi, 120)


def _held_budgets(prediction: dict | None) -> tuple[np.ndarray, Allocation | None]:
    if not prediction or "train_alloc" not in prediction:
        return np.array([]), None
    return np.array([row["C"] for row in prediction["rows"]]), prediction["train_alloc"]


def loss_vs_compute(alloc: Allocation, compute: list[float], prediction: dict | None = None) -> object:
    """The loss at each budget's optimum with the fitted L_opt(C) = k_L C^-gamma and its band (and the learning
    curves and their envelope for approach 1)."""
    title = "Learning curves and their envelope" if alloc.curves else "Loss at the optimum of each budget"
    fig, ax = axes(title, LABEL["C"], LABEL["loss"])
    if alloc.curves:
        sizes = np.array([cv.N for cv in alloc.curves])
        norm = compute_norm(sizes)
        for cv in alloc.curves:
            ax.plot(cv.flops, cv.loss, color=cmap()(norm(cv.N)), lw=0.8, alpha=0.7)
        fig.colorbar(ax.scatter([], [], c=[], cmap=cmap(), norm=norm), ax=ax, label=LABEL["N"])
    ax.scatter(alloc.C, alloc.loss_opt, s=24, color="tab:red", zorder=4, label=r"$L$ at $N_{opt}$ per budget")
    edge = [g for g in alloc.groups if not g.used]
    if edge:
        ax.scatter(
            [g.C for g in edge],
            [g.loss_opt for g in edge],
            s=24,
            facecolor="white",
            edgecolor="tab:red",
            zorder=4,
            label="minimum outside its sizes (left out)",
        )
    grid = np.geomspace(alloc.C.min() / 2, alloc.C.max() * 3, 100)
    ax.plot(grid, alloc.predict_loss(grid), color="black", label=rf"fit: $L_{{opt}} \propto C^{{-{alloc.gamma:.3f}}}$")
    held_c, train = _held_budgets(prediction)
    if train is not None:
        ax.plot(grid, train.predict_loss(grid), color="tab:red", ls="--", label="fit without the held-out budget")
        loss_at = {g.C: g.loss_opt for g in alloc.groups}
        ax.scatter(held_c, [loss_at[c] for c in held_c], label="held-out budget (measured)", **HELD_OUT)
    if alloc.boot and "gamma" in alloc.boot:
        boot = alloc.boot["k_L"][:, None] * grid[None, :] ** (-alloc.boot["gamma"][:, None])
        ax.fill_between(
            grid, *np.percentile(boot, BAND, axis=0), color="black", alpha=0.15, lw=0, label="95% bootstrap band"
        )
    ax.legend(fontsize=7)
    return fig


def allocation_points(alloc: Allocation, compute: list[float], prediction: dict | None = None) -> object:
    """N_opt and D_opt per budget with the fitted power laws and bands, over the range up to the quoted compute,
    with the published allocations."""
    title = "IsoFLOP minima" if alloc.method == "isoflop" else "loss-envelope optima"
    fig, ax = axes(f"Compute-optimal $N$ and $D$ from {title}", LABEL["C"], r"parameters $N$ or tokens $D$")
    grid = _grid(alloc, compute)
    p = alloc.params
    for q, values, color in (("N", alloc.n_opt, "tab:blue"), ("D", alloc.d_opt, "tab:orange")):
        exponent = "a" if q == "N" else "b"
        ax.scatter(alloc.C, values, s=26, color=color, zorder=4, label=rf"${q}_{{opt}}$ per budget")
        ax.plot(
            grid,
            p[f"k_{q}"] * grid ** p[exponent],
            color=color,
            lw=2,
            label=rf"fit: ${q}_{{opt}} \propto C^{{{p[exponent]:.3f}}}$",
        )
        if alloc.boot:
            boot = alloc.boot[f"k_{q}"][:, None] * grid[None, :] ** alloc.boot[exponent][:, None]
            ax.fill_between(grid, *np.percentile(boot, BAND, axis=0), color=color, alpha=0.2, lw=0)
    edge = [g for g in alloc.groups if not g.used]
    if edge:
        ax.scatter(
            [g.C for g in edge],
            [np.exp(g.log_n_opt) for g in edge],
            s=26,
            facecolor="white",
            edgecolor="tab:blue",
            zorder=4,
            label=r"$N_{opt}$ outside its sizes (left out)",
        )
    held_c, train = _held_budgets(prediction)
    if train is not None:
        ax.plot(
            grid, train.predict_n(grid), color="tab:red", ls="--", lw=1.2, label=r"$N_{opt}$ fit without the held-out"
        )
        n_at = {g.C: np.exp(g.log_n_opt) for g in alloc.groups}
        ax.scatter(held_c, [n_at[c] for c in held_c], label=r"held-out budget's $N_{opt}$", **HELD_OUT)
    reference_lines(ax, grid)
    ax.legend(fontsize=6, title="95% bootstrap bands shaded", title_fontsize=6, ncols=2)
    return fig
