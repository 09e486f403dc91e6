"""Chinchilla approaches 1 (envelope) and 2 (IsoFLOP): compute-optimal N_opt(C), D_opt(C) as power laws.

Approach 3 (the parametric L(N, D) fit) lives in fit.py / laws.py; its allocation is laws.chinchilla_allocation.
Both approaches here end the same way: points (C, N_opt) fitted by a line in log-log, so
N_opt = k_N C^a and D_opt = k_D C^b, bootstrapped for standard errors and intervals; the loss at the optimum
gets its own line, L_opt = k_L C^-gamma. An IsoFLOP minimum outside its budget's sampled sizes is an
extrapolation: it is listed and left out of N_opt(C) (unless keep_edge_minima), in the point estimate and the
bootstrap alike.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from analysis.points import Points
from analysis.results import AnalysisError, Curve
from analysis.selection import frontier

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
    inside: bool = True  # the vertex lies within the sampled sizes
    used: bool = True  # the vertex enters N_opt(C) (inside, or kept with keep_edge_minima)
    fitted: np.ndarray | None = None  # which of the profile's points the parabola was fitted to (the window)


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
    gamma: float = float("nan")  # L_opt = k_L C^-gamma, through the used optima
    log_k_l: float = float("nan")
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

    def predict_loss(self, c: np.ndarray) -> np.ndarray:
        return np.exp(self.log_k_l - self.gamma * np.log(c))

    @property
    def used(self) -> list[IsoGroup]:
        return [g for g in self.groups if g.used] if self.groups else []


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
    points: Points,
    *,
    tol_dex: float = 0.05,
    bootstrap: int = 0,
    seed: int = 0,
    min_sizes: int = 3,
    keep_edge_minima: bool = False,
    window: float | None = None,
) -> Allocation:
    """Approach 2: a parabola of loss against log N per budget, its vertex, then power laws in C.

    window (in log N): each parabola is refitted to the sizes within that distance of its vertex, so the far
    tails of a profile (where loss is not quadratic in log N) do not move the minimum."""
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
        if not _fit_parabola(grp, window, min_sizes):
            notes.append(
                (
                    f"the IsoFLOP profile at C = {grp.C:.3g} FLOP is not convex (no minimum), so it is skipped.",
                    UserWarning,
                )
            )
            continue
        grp.inside = bool(grp.log_n.min() <= grp.log_n_opt <= grp.log_n.max())
        grp.used = grp.inside or keep_edge_minima
        if not grp.inside:
            fate = "kept (--keep-edge-minima)" if keep_edge_minima else "left out of N_opt(C)"
            notes.append(
                (
                    f"the IsoFLOP minimum at C = {grp.C:.3g} FLOP lies at N = {np.exp(grp.log_n_opt):.3g}, outside the "
                    f"sampled sizes {np.exp(grp.log_n.min()):.3g}..{np.exp(grp.log_n.max()):.3g}, so its N_opt is an "
                    f"extrapolation and is {fate}; add sizes beyond it.",
                    ExtrapolationWarning,
                )
            )
        groups.append(grp)
    used = [g for g in groups if g.used]
    if len(used) < 2:
        edge = len(groups) - len(used)
        if edge:
            fix = (
                f"{edge} more have their minimum outside the sampled sizes: add sizes beyond it, or --keep-edge-minima"
            )
        else:
            fix = f"budgets within {tol_dex} decades are grouped; widen that with --budget-tolerance"
        raise AnalysisError(
            f"the IsoFLOP approach needs at least 2 compute budgets with {min_sizes} or more model sizes and a "
            f"minimum inside them, but {points.source} has {len(used)} ({fix})."
        )
    for note, category in notes:
        warnings.warn(note, category, stacklevel=2)
    alloc = Allocation(
        "isoflop",
        np.array([g.C for g in used]),
        np.exp([g.log_n_opt for g in used]),
        np.array([g.loss_opt for g in used]),
        records="IsoFLOP parabola vertices" + (f" fitted within {window:g} of log N of each minimum" if window else ""),
        groups=groups,
        warnings=[note for note, _ in notes],
    )
    _fit_power_laws(alloc)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        vertices = [_boot_vertices(g, bootstrap, rng) for g in used]
        log_n_opt = np.stack([v[0] for v in vertices], axis=1)  # (R, G)
        loss_opt = np.stack([v[1] for v in vertices], axis=1)
        _boot_power_laws(alloc, np.log(alloc.C), log_n_opt, np.log(loss_opt))
    return alloc


def _fit_parabola(grp: IsoGroup, window: float | None, min_sizes: int) -> bool:
    """The profile's parabola and vertex (refitted within `window` of the vertex); False when it has no minimum."""
    fitted = np.ones(len(grp.loss), dtype=bool)
    for _ in range(3 if window else 1):
        coef = np.polyfit(grp.log_n[fitted], grp.loss[fitted], 2)
        if coef[0] <= 0:
            return False
        vertex = -coef[1] / (2 * coef[0])
        if not window:
            break
        near = np.abs(grp.log_n - vertex) <= window
        if len(np.unique(grp.log_n[near])) < min_sizes or np.array_equal(near, fitted):
            break
        fitted = near
    grp.coef, grp.fitted = coef, fitted
    grp.log_n_opt = float(-coef[1] / (2 * coef[0]))
    grp.loss_opt = float(np.polyval(coef, grp.log_n_opt))
    return True


def _boot_vertices(g: IsoGroup, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(log N, loss) at the vertex of the parabola refitted to each resample of the group's points (NaN when
    degenerate)."""
    sel = g.fitted if g.fitted is not None else np.ones(len(g.loss), dtype=bool)
    log_n, loss = g.log_n[sel], g.loss[sel]
    k = len(loss)
    w = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    x = log_n - log_n.mean()  # centred for a well-conditioned 3x3 system
    design = np.stack([np.ones_like(x), x, x * x], axis=1)
    xtwx = np.einsum("rn,ni,nj->rij", w, design, design)
    xtwy = np.einsum("rn,ni,n->ri", w, design, loss)
    ok = np.abs(np.linalg.det(xtwx)) > 1e-12 * np.abs(xtwx).max(axis=(1, 2)) ** 3
    coef = np.full((n_boot, 3), np.nan)
    coef[ok] = np.linalg.solve(xtwx[ok], xtwy[ok][..., None])[..., 0]
    with np.errstate(all="ignore"):
        vertex = np.where(coef[:, 2] > 0, -coef[:, 1] / (2 * coef[:, 2]), np.nan)
    # A nearly flat resample puts its vertex anywhere; beyond a decade outside the sampled sizes it says
    # nothing about N_opt and would dominate the standard errors, so such a resample drops this budget.
    span = (x.min() - _VERTEX_SLACK, x.max() + _VERTEX_SLACK)
    vertex = np.where((vertex >= span[0]) & (vertex <= span[1]), vertex, np.nan)
    loss_at = coef[:, 0] + coef[:, 1] * vertex + coef[:, 2] * vertex * vertex
    return vertex + log_n.mean(), loss_at


def _fit_power_laws(alloc: Allocation) -> None:
    x = np.log(alloc.C)
    alloc.a, alloc.log_k_n = np.polyfit(x, np.log(alloc.n_opt), 1)
    alloc.b, alloc.log_k_d = np.polyfit(x, np.log(alloc.d_opt), 1)
    resid = np.log(alloc.n_opt) - (alloc.log_k_n + alloc.a * x)
    alloc.rss = float(np.sum(resid**2))
    slope, alloc.log_k_l = np.polyfit(x, np.log(alloc.loss_opt), 1)
    alloc.gamma = -slope


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
    alloc: Allocation, log_c: np.ndarray, log_n_opt: np.ndarray, log_loss_opt: np.ndarray, weights=None
) -> None:
    w = np.ones_like(log_n_opt) if weights is None else weights
    a, log_k_n = _line_batched(log_c, log_n_opt, w)
    b, log_k_d = _line_batched(log_c, np.log(np.exp(log_c) / 6.0)[None, :] - log_n_opt, w)
    slope_l, log_k_l = _line_batched(log_c, log_loss_opt, w)
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(slope_l)
    alloc.boot = {
        "a": a[ok],
        "b": b[ok],
        "k_N": np.exp(log_k_n[ok]),
        "k_D": np.exp(log_k_d[ok]),
        "gamma": -slope_l[ok],
        "k_L": np.exp(log_k_l[ok]),
    }


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
    unannealed = unannealed_share(curves, budgets, np.argmin(losses, axis=1))
    if unannealed > 0:
        alloc.warnings.append(
            f"{unannealed:.0%} of the envelope's budgets are won at steps whose learning rate had not decayed yet "
            "(above 1.5x the run's final rate): those losses sit above what a run annealed at that length reaches, "
            "so Approach 1 is biased there; anneal at each budget (WSD branches) or use --law isoflop on run ends."
        )
    return alloc


def unannealed_share(curves: list[Curve], budgets: np.ndarray, winners: np.ndarray) -> float:
    """The share of budgets whose winning run was still above 1.5x its final learning rate there."""
    late = []
    for c, j in zip(budgets, winners, strict=True):
        cv = curves[j]
        if cv.lr is None or not cv.lr[-1] > 0:
            continue
        lr_there = np.interp(np.log(c), np.log(cv.flops), cv.lr)
        late.append(lr_there > 1.5 * cv.lr[-1])
    return float(np.mean(late)) if late else 0.0


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
        shape = w.shape
        log_n, log_l = np.broadcast_to(np.log(n_opt), shape), np.broadcast_to(np.log(loss_opt), shape)
        _boot_power_laws(alloc, np.log(c), log_n, log_l, w)
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
