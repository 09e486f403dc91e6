"""Benchmark: the full 4,500-start grid plus 4,000 bootstrap refits of L(N, D) on the reference points."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from analysis.fit import fit_law, summarize_samples
from analysis.laws import chinchilla
from analysis.points import load_points
from analysis.results import AnalysisError

REFERENCE = Path(__file__).resolve().parent / "reference" / "chinchilla_epoch_240.csv"  # see its README


def run_bench(csv: str | None = None, bootstrap: int = 4000, seed: int = 0) -> int:
    """Time grid + bootstrap; prints the seconds and the fitted parameters with their standard errors."""
    path = Path(csv) if csv else REFERENCE
    if not path.exists():
        raise AnalysisError(f"benchmark data {path} is missing; pass --csv with a CSV of N, D and loss.")
    pts = load_points(path, need=("N", "D"))
    law = chinchilla()
    logx = np.log(np.stack([pts.N, pts.D]))
    t0 = time.perf_counter()
    grid = fit_law(law, logx, pts.loss)
    t1 = time.perf_counter()
    boot = fit_law(law, logx, pts.loss, starts=grid.theta[None, :], bootstrap=bootstrap, seed=seed)
    t2 = time.perf_counter()
    stderr, _ = summarize_samples(boot.boot_params())
    print(f"data: {path} ({len(pts)} points)")
    print(f"grid: {grid.n_starts} starts, {grid.n_converged} converged, {t1 - t0:.2f} s")
    print(
        f"bootstrap: {bootstrap} refits ({boot.boot_info.get('start')}), {boot.boot_info.get('n_converged', 0)} converged, "
        f"{t2 - t1:.2f} s"
    )
    for name, value in grid.params.items():
        print(f"  {name:>6} = {value:.6g} +- {stderr.get(name, float('nan')):.4g}")
    print(f"total: {t2 - t0:.2f} s (grid + {bootstrap} bootstraps)")
    return 0
