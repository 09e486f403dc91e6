"""Which points a fit sees: the user's selection (compute range, tokens-per-parameter range, budgets, excluded
runs), then the law's own (Kaplan's one-variable laws read frontiers)."""

from __future__ import annotations

import numpy as np

from analysis.points import Points
from analysis.results import AnalysisError

LAW_SELECTION = {
    "kaplan_n": "lowest loss at each model size N (L(N) is the loss of a size trained on ample data)",
    "kaplan_d": "lowest loss at each token count D (L(D) is the loss of ample model size)",
    "kaplan_c": "the compute frontier: points with lower loss than every point of smaller compute",
}


def select(
    points: Points,
    *,
    min_compute: float | None = None,
    max_compute: float | None = None,
    tpp_range: tuple[float, float] | None = None,
    budgets: list[float] | None = None,
    exclude: list[str] | None = None,
    tol_dex: float = 0.05,
) -> Points:
    """The points the user asked for; each filter that removed something says so in points.notes."""
    keep = np.ones(len(points), dtype=bool)
    said: list[str] = []

    def apply(mask: np.ndarray, what: str) -> None:
        dropped = int((keep & ~mask).sum())
        keep[:] &= mask
        if dropped:
            said.append(f"{dropped} point(s) {what}")

    if min_compute is not None:
        apply(points.get("C") >= min_compute, f"below --min-compute {min_compute:g} left out")
    if max_compute is not None:
        apply(points.get("C") <= max_compute, f"above --max-compute {max_compute:g} left out")
    if tpp_range is not None:
        lo, hi = tpp_range
        tpp = points.get("D") / points.get("N")
        apply((tpp >= lo) & (tpp <= hi), f"outside --tpp-range {lo:g} {hi:g} tokens per parameter left out")
    if budgets:
        log_c = np.log10(points.get("C"))
        near = np.zeros(len(points), dtype=bool)
        for b in budgets:
            near |= np.abs(log_c - np.log10(b)) <= tol_dex
        apply(near, f"at budgets other than --budgets {' '.join(f'{b:g}' for b in budgets)} left out")
    if exclude:
        unknown = [e for e in exclude if not any(e in (name, name.split("/")[-1]) for name in points.names)]
        if unknown:
            raise AnalysisError(
                f"--exclude names {', '.join(unknown)}, which is not a run of {points.source}; give run names as "
                "summary.csv lists them."
            )
        apply(
            np.array([name not in exclude and name.split("/")[-1] not in exclude for name in points.names]),
            "excluded by --exclude",
        )
    if not keep.any():
        raise AnalysisError(
            f"the selection leaves no point of {points.source}; widen --min-compute, --max-compute, "
            "--tpp-range or --budgets."
        )
    out = points.subset(np.flatnonzero(keep))
    out.notes = [*points.notes, *(f"selection: {s}." for s in said)]
    return out


def frontier(c: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the compute frontier: points with lower loss than every point of smaller or equal compute."""
    order = np.lexsort((loss, c))
    best, keep = np.inf, []
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep, dtype=np.int64)


def select_points(points: Points, name: str) -> Points:
    """The points a law is fitted to: Kaplan's one-variable laws read frontiers, the others every point."""
    if name in ("kaplan_n", "kaplan_d"):
        x = points.get(name[-1].upper())
        keep = [np.flatnonzero(x == v)[np.argmin(points.loss[x == v])] for v in np.unique(x)]
        return points.subset(np.array(keep))
    if name == "kaplan_c":
        return points.subset(np.sort(frontier(points.get("C"), points.loss)))
    return points
