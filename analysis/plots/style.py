"""What every figure shares: axes in the papers' style (log-log where the law is a power law, mathtext labels),
the colour scale for compute, the published allocations drawn as reference lines, and saving as PNG and PDF.

Built on matplotlib's object API (Figure + Agg canvas), never pyplot, so importing this changes no global
backend: it works headless, in tests, and next to a notebook's inline backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, MaxNLocator, NullLocator, ScalarFormatter

from analysis import laws

LABEL = {
    "N": r"parameters $N$",
    "D": r"training tokens $D$",
    "C": r"training compute $C$ (FLOP)",
    "loss": r"loss $L$ (nats per token)",
}
BAND = (2.5, 97.5)
PUBLISHED = json.loads((Path(__file__).resolve().parents[1] / "reference" / "published.json").read_text())
HELD_OUT = dict(marker="D", s=46, facecolor="white", edgecolor="tab:red", linewidths=1.5, zorder=5)


def axes(title: str, xlabel: str, ylabel: str, *, logy: bool = True, size=(6.4, 4.6)):
    """A figure with log x (and log y unless logy=False); losses, which span less than a decade, get plain ticks."""
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(LogFormatterSciNotation())
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.title.set_fontsize(10)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def cmap():
    return colormaps["viridis"]


def compute_norm(c: np.ndarray) -> LogNorm:
    lo, hi = float(np.min(c)), float(np.max(c))
    return LogNorm(lo, hi if hi > lo else lo * 10)


def sci(x: float) -> str:
    """3e+11 -> '3\\times10^{11}' for mathtext labels."""
    mant, exp = f"{x:.2g}".split("e") if "e" in f"{x:.2g}" else (f"{x:.2g}", "0")
    if not int(exp):
        return mant
    return rf"10^{{{int(exp)}}}" if mant == "1" else rf"{mant}\times10^{{{int(exp)}}}"


def reference_lines(ax, c: np.ndarray) -> None:
    """The published compute-optimal N_opt(C) of Kaplan 2020, Hoffmann 2022 and Epoch 2024, over the plotted range."""
    styles = {"kaplan2020": ":", "hoffmann2022": "--", "epoch2024": "-."}
    for key, ref in PUBLISHED.items():
        if ref["form"] == "power":
            n_opt = ref["k"] * (c / ref["c_unit"]) ** ref["a"]
            exponent = ref["a"]
        else:
            alloc = laws.chinchilla_allocation({k: np.asarray(ref[k]) for k in ("E", "A", "B", "alpha", "beta")}, c)
            n_opt, exponent = alloc["N_opt"], float(alloc["a"])
        ax.plot(
            c,
            n_opt,
            styles[key],
            color="0.35",
            lw=1.0,
            label=rf"{ref['label']}: $N_{{opt}}\propto C^{{{exponent:.2f}}}$",
        )


def stamp_invalid(fig: Figure, reasons: list[str]) -> None:
    """A fit forced past its validity checks says so on the figure itself."""
    text = "INVALID FIT (forced past its checks): " + "; ".join(r.split(";")[0] for r in reasons)
    fig.suptitle(text[:220], color="tab:red", fontsize=7, wrap=True)


def loss_ticks(ax) -> None:
    """A log loss axis spans less than a decade, where log ticks fall on one or two values: plain, evenly spaced
    ticks over the drawn range instead."""
    lo, hi = ax.get_ylim()
    ticks = [t for t in MaxNLocator(nbins=7).tick_values(lo, hi) if lo <= t <= hi]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())


def save(fig: Figure, out: Path, stem: str) -> tuple[str, str]:
    """stem.png and stem.pdf in `out`; returns both names."""
    for ax in fig.axes:
        if ax.get_yscale() == "log" and ax.get_ylabel() == LABEL["loss"]:
            loss_ticks(ax)
    FigureCanvasAgg(fig)
    fig.savefig(out / f"{stem}.png", dpi=110)
    fig.savefig(out / f"{stem}.pdf")
    return f"{stem}.png", f"{stem}.pdf"


def error_bars(ax, x: np.ndarray, y: np.ndarray, se: np.ndarray | None, **kw) -> None:
    """Points with their standard errors (two-sided), when measured."""
    if se is None:
        ax.scatter(x, y, **kw)
        return
    color = kw.pop("color", "tab:blue")
    label = kw.pop("label", None)
    ax.errorbar(x, y, yerr=se, fmt="none", ecolor=color, elinewidth=1, capsize=2, alpha=0.8)
    ax.scatter(x, y, color=color, label=label, **kw)
