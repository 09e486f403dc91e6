"""Calibration: synthetic laws with known parameters and noise, 50 seeded replicates each; the 95% bootstrap
intervals must cover the truth in at least 90% of them (for L(N, D), for the IsoFLOP exponent, and for the
seeded parametric bootstrap of L(N) = E + A / N^alpha)."""

from __future__ import annotations

import warnings

import numpy as np

from analysis import approaches
from analysis.fit import fit_law, summarize_samples
from analysis.laws import get_law
from analysis.points import Points

REPLICATES = 50
LEVEL = 0.95


def coverage(hits: dict[str, int]) -> dict[str, float]:
    return {k: v / REPLICATES for k, v in hits.items()}


def test_chinchilla_intervals_cover_the_truth():
    true = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
    law = get_law("chinchilla")
    starts = law.grid()[::15]  # 300 of the 4,500 starts: the synthetic landscape is benign; keeps the test quick
    hits = dict.fromkeys(true, 0)
    for r in range(REPLICATES):
        rng = np.random.default_rng(100 + r)
        n, d = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 40)), np.exp(rng.uniform(np.log(1e8), np.log(1e11), 40))
        loss = law.predict(true, N=n, D=d) * np.exp(rng.normal(0, 0.01, 40))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_law(law, np.log(np.stack([n, d])), loss, starts=starts, bootstrap=100, seed=r)
        _, intervals = summarize_samples(fit.boot_params(), LEVEL)
        for k, v in true.items():
            hits[k] += intervals[k][0] <= v <= intervals[k][1]
    assert min(coverage(hits).values()) >= 0.9, coverage(hits)


def test_isoflop_exponent_interval_covers_the_truth():
    """Five budgets of seven sizes: loss a parabola in log N around N_opt = 0.1 C^0.5, noise 0.3% on each run."""
    hits = {"a": 0, "b": 0}
    budgets = 1e18 * 10 ** (np.arange(5) / 2)
    for r in range(REPLICATES):
        rng = np.random.default_rng(200 + r)
        rows_n, rows_c, rows_l = [], [], []
        for k, c in enumerate(budgets):
            x = np.log(0.1 * c**0.5) + np.linspace(-1.2, 1.2, 7) + rng.uniform(-0.2, 0.2)
            rows_n.append(np.exp(x))
            rows_c.append(np.full(7, c))
            clean = 3.0 - 0.1 * k + 0.05 * (x - np.log(0.1 * c**0.5)) ** 2
            rows_l.append(clean * np.exp(rng.normal(0, 0.003, 7)))
        n, c, loss = (np.concatenate(v) for v in (rows_n, rows_c, rows_l))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alloc = approaches.isoflop(Points(loss, n, c / (6 * n), c), bootstrap=300, seed=r)
        _, intervals = summarize_samples(alloc.boot, LEVEL)
        hits["a"] += intervals["a"][0] <= 0.5 <= intervals["a"][1]
        hits["b"] += intervals["b"][0] <= 0.5 <= intervals["b"][1]
    assert min(coverage(hits).values()) >= 0.9, coverage(hits)


def test_seeded_parametric_bootstrap_covers_the_truth():
    """Seven sizes, two seeds each, seed noise 0.6% (as cpu_sweep measures it): the fit weights by the seed means'
    standard errors and redraws each size from them."""
    true = {"E": 3.3, "A": 30.0, "alpha_N": 0.5}
    law = get_law("kaplan_n", irreducible=True)
    sizes = np.geomspace(1.9e3, 8.5e4, 7)
    hits = dict.fromkeys(true, 0)
    for r in range(REPLICATES):
        rng = np.random.default_rng(300 + r)
        seeds = law.predict(true, N=sizes)[:, None] * np.exp(rng.normal(0, 0.006, (7, 2)))
        pts = Points(seeds.mean(axis=1), sizes, replicates=[row for row in seeds])
        noise = pts.seed_noise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_law(
                law, np.log(sizes)[None, :], pts.loss, bootstrap=200, seed=r, weights=1 / noise**2, noise=noise
            )
        _, intervals = summarize_samples(fit.boot_params(), LEVEL)
        for k, v in true.items():
            hits[k] += intervals[k][0] <= v <= intervals[k][1]
    assert min(coverage(hits).values()) >= 0.9, coverage(hits)
