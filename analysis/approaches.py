"""Chinchilla approaches 1 (envelope) and 2 (IsoFLOP): compute-optimal N_opt(C), D_opt(C) as power laws.

Approach 3 (the parametric L(N, D) fit) lives in fit.py / laws.py; its allocation is laws.chinchilla_allocation.
Both approaches here end the same way: points (C, N_opt) fitted by a line in log-log, so
N_opt = k_N C^a and D_opt = k_D C^b, bootstrapped for standard errors and intervals. The compute frontier
and the point selection of Kaplan's one-variable laws live here too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from analysis.results import AnalysisError, Curve, Points

SELECTION = {
    "kaplan_n": "lowest loss at each model size N (L(N) is the loss of a size trained on ample data)",
    "kaplan_d": "lowest loss at each token count D (L(D) is the loss of ample model size)",
    "kaplan_c": "the compute frontier: points with lower loss than every point of smaller compute",
}

_VERTEX_SLACK = np.log(10.0)  # bootstrap vertices further than this (in log N) outside the data are dropped


class ExtrapolationWarning(UserWarning):
    """An IsoFLOP vertex outside the sampled model sizes: its N_opt is extrapolated."""


@dataclass
class IsoGroup:
    """One IsoFLOP profile: runs at (about) the same compute, a parabola of loss against log N."""

    C: float
    log_n: np.ndarray
    loss: np.ndarray
    index: np.ndarray  # rows of the input points in this profile
    coef: np.ndarray | None = None  # (c2, c1, c0) of loss = c2 x^2 + c1 x + c0, x = log N
    log_n_opt: float = float("nan")
    loss_opt: float = float("nan")
    inside: bool = True


@dataclass
class Allocation:
    """Compute-optimal allocation: the per-budget optima and the power laws through them."""

    method: str
    C: np.ndarray
    n_opt: np.ndarray
    loss_opt: np.ndarray
    a: float = float("nan")
    b: float = float("nan")
    log_k_n: float = float("nan")
    log_k_d: float = float("nan")
    rss: float = float("nan")
    boot: dict[str, np.ndarray] = field(default_factory=dict)
    groups: list[IsoGroup] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: str = ""  # what the optima were read from

    @property
    def d_opt(self) -> np.ndarray:
        return self.C / (6.0 * self.n_opt)  # C = 6 N D

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "k_N": float(np.exp(self.log_k_n)), "k_D": float(np.exp(self.log_k_d))}

    def predict_n(self, c: np.ndarray) -> np.ndarray:
        return np.exp(self.log_k_n + self.a * np.log(c))


def allocation_derived(params: dict[str, np.ndarray], compute: list[float]) -> dict[str, np.ndarray]:
    """N_opt, D_opt and tokens per parameter at each requested compute (elementwise over bootstrap arrays)."""
    a, b = np.asarray(params["a"]), np.asarray(params["b"])
    out: dict[str, np.ndarray] = {}
    for c in compute:
        n_opt, d_opt = params["k_N"] * c**a, params["k_D"] * c**b
        key = f"{c:.3g}"
        out[f"N_opt@{key}"], out[f"D_opt@{key}"], out[f"tokens_per_param@{key}"] = n_opt, d_opt, d_opt / n_opt
    return out


def group_budgets(c: np.ndarray, tol_dex: float = 0.05) -> np.ndarray:
    """Group label per point: runs whose log10 C lie within `tol_dex` of their neighbour share a budget.

    Sweeps aim at exact budgets but round tokens to whole batches, and extracted data is noisy, so exact
    equality would split every profile.
    """
    order = np.argsort(c)
    gaps = np.diff(np.log10(c[order])) > tol_dex
    labels = np.empty(len(c), dtype=np.int64)
    labels[order] = np.concatenate([[0], np.cumsum(gaps)])
    return labels


def isoflop(
    points: Points, *, tol_dex: float = 0.05, bootstrap: int = 0, seed: int = 0, min_sizes: int = 3
) -> Allocation:
    """Approach 2: a parabola of loss against log N per budget, its vertex, then power laws in C."""
    n, c, loss = points.get("N"), points.get("C"), points.loss
    labels = group_budgets(c, tol_dex)
    groups: list[IsoGroup] = []
    notes: list[tuple[str, type[Warning]]] = []
    for g in np.unique(labels):
        m = labels == g
        if len(np.unique(n[m])) < min_sizes:
            continue  # a parabola needs three distinct sizes
        grp = IsoGroup(
            C=float(np.exp(np.mean(np.log(c[m])))), log_n=np.log(n[m]), loss=loss[m], index=np.flatnonzero(m)
        )
        coef = np.polyfit(grp.log_n, grp.loss, 2)
        if coef[0] <= 0:
            notes.append(
                (
                    f"the IsoFLOP profile at C = {grp.C:.3g} FLOP is not convex (no minimum), so it is skipped.",
                    UserWarning,
                )
            )
            continue
        grp.coef = coef
        grp.log_n_opt = float(-coef[1] / (2 * coef[0]))
        grp.loss_opt = float(np.polyval(coef, grp.log_n_opt))
        grp.inside = bool(grp.log_n.min() <= grp.log_n_opt <= grp.log_n.max())
        if not grp.inside:
            notes.append(
                (
                    f"the IsoFLOP minimum at C = {grp.C:.3g} FLOP lies at N = {np.exp(grp.log_n_opt):.3g}, "
                    f"outside the sampled sizes {np.exp(grp.log_n.min()):.3g}..{np.exp(grp.log_n.max()):.3g}, "
                    "so its N_opt is an extrapolation; add sizes beyond it.",
                    ExtrapolationWarning,
                )
            )
        groups.append(grp)
    if len(groups) < 2:
        raise AnalysisError(
            f"the IsoFLOP approach needs at least 2 compute budgets with {min_sizes} or more model "
            f"sizes each, but {points.source} has {len(groups)} (budgets within {tol_dex} decades "
            "are grouped; widen that with --budget-tolerance)."
        )
    for note, category in notes:
        warnings.warn(note, category, stacklevel=2)
    alloc = Allocation(
        "isoflop",
        np.array([g.C for g in groups]),
        np.exp([g.log_n_opt for g in groups]),
        np.array([g.loss_opt for g in groups]),
        records="IsoFLOP parabola vertices",
        groups=groups,
        warnings=[note for note, _ in notes],
    )
    _fit_power_laws(alloc)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        log_n_opt = np.stack([_boot_vertices(g, bootstrap, rng) for g in groups], axis=1)  # (R, G)
        _boot_power_laws(alloc, np.log(alloc.C), log_n_opt)
    return alloc


def _boot_vertices(g: IsoGroup, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Vertex of the parabola refitted to each resample of the group's points (NaN when degenerate)."""
    k = len(g.loss)
    w = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    x = g.log_n - g.log_n.mean()  # centred for a well-conditioned 3x3 system
    design = np.stack([np.ones_like(x), x, x * x], axis=1)
    xtwx = np.einsum("rn,ni,nj->rij", w, design, design)
    xtwy = np.einsum("rn,ni,n->ri", w, design, g.loss)
    ok = np.abs(np.linalg.det(xtwx)) > 1e-12 * np.abs(xtwx).max(axis=(1, 2)) ** 3
    coef = np.full((n_boot, 3), np.nan)
    coef[ok] = np.linalg.solve(xtwx[ok], xtwy[ok][..., None])[..., 0]
    with np.errstate(all="ignore"):
        vertex = np.where(coef[:, 2] > 0, -coef[:, 1] / (2 * coef[:, 2]), np.nan)
    # A nearly flat resample puts its vertex anywhere; beyond a decade outside the sampled sizes it says
    # nothing about N_opt and would dominate the standard errors, so such a resample drops this budget.
    span = (x.min() - _VERTEX_SLACK, x.max() + _VERTEX_SLACK)
    vertex = np.where((vertex >= span[0]) & (vertex <= span[1]), vertex, np.nan)
    return vertex + g.log_n.mean()


def _fit_power_laws(alloc: Allocation) -> None:
    x = np.log(alloc.C)
    alloc.a, alloc.log_k_n = np.polyfit(x, np.log(alloc.n_opt), 1)
    alloc.b, alloc.log_k_d = np.polyfit(x, np.log(alloc.d_opt), 1)
    resid = np.log(alloc.n_opt) - (alloc.log_k_n + alloc.a * x)
    alloc.rss = float(np.sum(resid**2))


def _line_batched(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares lines y = i + s x, one per row of y / w (NaN entries get weight 0)."""
    w = np.where(np.isfinite(y), w, 0.0)
    y = np.where(np.isfinite(y), y, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(all="ignore"):
        mx, my = (w * x).sum(axis=1) / sw, (w * y).sum(axis=1) / sw
        dx = x[None, :] - mx[:, None]
        slope = (w * dx * (y - my[:, None])).sum(axis=1) / (w * dx * dx).sum(axis=1)
    return slope, my - slope * mx


def _boot_power_laws(
    alloc: Allocation, log_c: np.ndarray, log_n_opt: np.ndarray, weights: np.ndarray | None = None
) -> None:
    w = np.ones_like(log_n_opt) if weights is None else weights
    a, log_k_n = _line_batched(log_c, log_n_opt, w)
    b, log_k_d = _line_batched(log_c, np.log(np.exp(log_c) / 6.0)[None, :] - log_n_opt, w)
    ok = np.isfinite(a) & np.isfinite(b)
    alloc.boot = {"a": a[ok], "b": b[ok], "k_N": np.exp(log_k_n[ok]), "k_D": np.exp(log_k_d[ok])}


def envelope(
    curves: list[Curve], *, n_budgets: int = 40, smooth: int = 5, bootstrap: int = 0, seed: int = 0
) -> Allocation:
    """Approach 1: at each FLOP budget the run with the lowest (smoothed) loss gives N_opt(C).

    Budgets are log-spaced over the range where at least two runs have records; a run is a candidate
    at a budget only if its records cover it, and its loss there is interpolated in log FLOPs.
    """
    lo = min(cv.flops[0] for cv in curves)
    hi = max(cv.flops[-1] for cv in curves)
    budgets = np.geomspace(lo, hi, n_budgets)
    losses = np.full((len(budgets), len(curves)), np.inf)
    for j, cv in enumerate(curves):
        sm = _moving_average(cv.loss, smooth)
        cover = (budgets >= cv.flops[0]) & (budgets <= cv.flops[-1])
        losses[cover, j] = np.interp(np.log(budgets[cover]), np.log(cv.flops), sm)
    usable = np.isfinite(losses).sum(axis=1) >= 2
    budgets, losses = budgets[usable], losses[usable]
    win = np.argmin(losses, axis=1)
    n_opt = np.array([curves[j].N for j in win])
    sizes = np.array([cv.N for cv in curves])
    # Where the smallest or largest size wins, the true optimum may lie beyond the sweep: those budgets
    # would flatten N_opt(C), so they are left out unless too little remains.
    interior = (n_opt > sizes.min()) & (n_opt < sizes.max())
    note = None
    if len(np.unique(n_opt[interior])) >= 2 and interior.sum() >= 3:
        if not interior.all():
            note = (
                f"{int((~interior).sum())} of {len(n_opt)} budgets won by the smallest or largest model were left "
                "out, since their optimum may lie outside the sampled sizes."
            )
        budgets, losses, n_opt = budgets[interior], losses[interior], n_opt[interior]
    elif not interior.all():
        note = (
            "the envelope is mostly won by the smallest or largest model, so N_opt(C) is pinned to the edge of "
            "the sweep; add sizes beyond it."
        )
    alloc = _finish_envelope(budgets, n_opt, losses.min(axis=1), curves, bootstrap, seed, "per-step records")
    if note:
        alloc.warnings.append(note)
    return alloc


def envelope_from_points(points: Points, *, bootstrap: int = 0, seed: int = 0) -> Allocation:
    """Approach 1 when only final points exist: the compute frontier (lower loss than every cheaper run)."""
    idx = frontier(points.get("C"), points.loss)
    return _finish_envelope(
        points.get("C")[idx],
        points.get("N")[idx],
        points.loss[idx],
        [],
        bootstrap,
        seed,
        "final points only (no per-step records)",
    )


def frontier(c: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the compute frontier: points with lower loss than every point of smaller or equal compute."""
    order = np.lexsort((loss, c))
    best, keep = np.inf, []
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep, dtype=np.int64)


def _finish_envelope(
    c: np.ndarray, n_opt: np.ndarray, loss_opt: np.ndarray, curves: list[Curve], bootstrap: int, seed: int, records: str
) -> Allocation:
    if len(np.unique(n_opt)) < 2:
        raise AnalysisError(
            "the loss envelope is won by a single model size at every budget, so N_opt(C) cannot be "
            "fitted; add smaller and larger models to the sweep."
        )
    # N_opt only takes the sampled sizes, so with few sizes the exponent is coarse.
    alloc = Allocation("envelope", c, n_opt, loss_opt, curves=curves, records=records)
    _fit_power_laws(alloc)
    if bootstrap > 0:
        # Resampling the envelope points (not whole runs): with a handful of runs, dropping one often leaves
        # a single winner and no fit at all.
        rng = np.random.default_rng(seed)
        w = rng.multinomial(len(c), np.full(len(c), 1.0 / len(c)), size=bootstrap).astype(np.float64)
        _boot_power_laws(alloc, np.log(c), np.broadcast_to(np.log(n_opt), w.shape), w)
    return alloc


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average whose window shrinks symmetrically at the ends.

    A one-sided window at the start of a steeply falling learning curve would pull the first points
    down to later, lower losses and hand the envelope a loss no run reached.
    """
    n = len(y)
    if window <= 1 or n < 3:
        return y
    idx = np.arange(n)
    half = np.minimum(np.minimum(idx, n - 1 - idx), window // 2)
    csum = np.concatenate([[0.0], np.cumsum(y)])
    return (csum[idx + half + 1] - csum[idx - half]) / (2 * half + 1)


def select_points(points: Points, name: str) -> Points:
    """The points a law is fitted to: Kaplan's one-variable laws read frontiers, the others every point."""
    if name in ("kaplan_n", "kaplan_d"):
        x = points.get(name[-1].upper())
        keep = [np.flatnonzero(x == v)[np.argmin(points.loss[x == v])] for v in np.unique(x)]
        return points.subset(np.array(keep))
    if name == "kaplan_c":
        return points.subset(np.sort(frontier(points.get("C"), points.loss)))
    return points
