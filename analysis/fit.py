"""Robust fitting of a law: Huber loss on log residuals, summed over points; multi-start L-BFGS; bootstrap.

This follows Hoffmann et al. 2022 and the Epoch replication (Besiroglu et al. 2024): the prediction is a
log-sum-exp in log space, the residual is log L_pred - log L, the Huber loss (delta = 1e-3) is summed
(not averaged, which left the original fit under-converged), and the best converged start of a grid wins.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from analysis.laws import Law
from analysis.optim import REASONS, BatchedObjective, minimize_lbfgs
from analysis.results import AnalysisError

_BLOCK_ELEMENTS = 32_768
_THREADS = max(1, min(4, os.cpu_count() or 1))
BOOT_GRID_STARTS = 2  # grid starts per bootstrap refit, beside the best full-data fit
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="analysis-fit")
    return _POOLS[threads]


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals and its derivative."""
    deriv = np.clip(r, -delta, delta)  # r inside the band, delta * sign(r) outside
    return deriv * (r - 0.5 * deriv), deriv


def huber_objective(
    law: Law, logx: np.ndarray, log_loss: np.ndarray, weights: np.ndarray, delta: float, threads: int | None = None
) -> BatchedObjective:
    """Batched objective: member `rows[i]` sums the Huber loss over points with weights[rows[i]] against the
    targets log_loss[rows[i]] (log_loss may be one row shared by every member).

    Weights are per-point multiplicities times precision weights, so a bootstrap resample is a row of counts and
    the grid starts share one row; targets differ per row when a bootstrap resamples each point's seeds.
    """

    def one(theta: np.ndarray, w: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred, jac = law.log_pred(theta, logx)
        value, deriv = huber(pred - target, delta)
        u = w * deriv
        grad = np.empty_like(theta)
        for p, (coef, feature) in enumerate(jac):
            uc = u if coef is None else u * coef
            grad[:, p] = uc.sum(axis=1) if feature is None else uc @ feature
        return (w * value).sum(axis=1), grad

    # Blocks of ~32k elements keep the temporaries in cache (the figures: docs/performance.md).
    block = max(1, _BLOCK_ELEMENTS // logx.shape[1])
    threads = _THREADS if threads is None else threads
    targets = np.atleast_2d(log_loss)

    def fun(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = weights[rows] if weights.shape[0] > 1 else np.broadcast_to(weights, (len(rows), weights.shape[1]))
        t = targets[rows] if targets.shape[0] > 1 else np.broadcast_to(targets, (len(rows), targets.shape[1]))
        spans = [slice(i, i + block) for i in range(0, theta.shape[0], block)]
        if threads < 2 or len(spans) < 2:
            outs = [one(theta[sl], w[sl], t[sl]) for sl in spans]
        else:
            # numpy releases the GIL inside its kernels, so blocks run on several cores.
            outs = list(_pool(threads).map(lambda sl: one(theta[sl], w[sl], t[sl]), spans))
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    return fun


@dataclass
class LawFit:
    """Best fit of a law plus, when requested, its bootstrap distribution."""

    law: Law
    theta: np.ndarray  # (P,) best fit in the optimiser's space
    objective: float  # summed Huber loss at the best fit
    n_points: int
    delta: float
    n_starts: int
    n_converged: int
    seconds: float
    boot_theta: np.ndarray | None = None  # (R, P) converged bootstrap refits
    boot_info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict[str, float]:
        return {k: float(v[0]) for k, v in self.law.to_params(self.theta).items()}

    def boot_params(self) -> dict[str, np.ndarray]:
        if self.boot_theta is None or len(self.boot_theta) == 0:
            return {}
        return self.law.to_params(self.boot_theta)


def fit_law(
    law: Law,
    logx: np.ndarray,
    loss: np.ndarray,
    *,
    delta: float = 1e-3,
    starts: np.ndarray | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    weights: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    boot_starts: int = BOOT_GRID_STARTS,
) -> LawFit:
    """Fit `law` to points (logx: (V, n) logs of the law's variables; loss: (n,)).

    Every start of the grid (law.grid() unless `starts` is given) runs L-BFGS; the lowest objective among
    converged starts is the fit. `weights` (n,) scale each point's Huber loss (precision weights from the
    measured noise; mean 1).

    The bootstrap: without measured noise, refits resample the points with replacement (a case bootstrap, as
    the Epoch replication does); with `noise` (n,), each point's standard error in log loss measured from its
    seeds, the design stays fixed and each refit redraws every point from its noise (a parametric bootstrap:
    in a designed sweep the sizes are chosen, the seed noise is what is random). Each refit starts from the
    best full-data fit and from `boot_starts` starts of the grid drawn for it (seeded), and keeps its best
    converged start: a parameter the data cannot pin then spreads over the grid instead of staying put.
    """
    t0 = time.perf_counter()
    log_loss = np.log(np.asarray(loss, dtype=np.float64))
    n = log_loss.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64) * n / np.sum(weights)
    starts = law.grid() if starts is None else np.atleast_2d(np.asarray(starts, dtype=np.float64))
    fun = huber_objective(law, logx, log_loss, w[None, :], delta)
    res = minimize_lbfgs(fun, starts)
    notes: list[str] = []
    conv = res.converged
    pool = np.flatnonzero(conv) if conv.any() else np.flatnonzero(np.isfinite(res.fun))
    if pool.size == 0:
        raise AnalysisError(
            f"no start of the {law.name} fit reached a finite objective; the data may not follow the law."
        )
    if not conv.any():
        reasons = ", ".join(sorted({REASONS[int(r)] for r in res.reason}))
        notes.append(f"no start converged ({reasons}); the best unconverged start is reported.")
    best = pool[np.argmin(res.fun[pool])]
    fit = LawFit(
        law=law,
        theta=res.x[best].copy(),
        objective=float(res.fun[best]),
        n_points=n,
        delta=delta,
        n_starts=len(starts),
        n_converged=int(conv.sum()),
        seconds=0.0,
        warnings=notes,
    )
    if bootstrap > 0:
        _bootstrap(fit, logx, log_loss, w, noise, bootstrap, seed, boot_starts)
    fit.seconds = time.perf_counter() - t0
    for note in fit.warnings:
        warnings.warn(note, stacklevel=2)
    return fit


def _boot_targets(log_loss: np.ndarray, noise: np.ndarray | None, n_boot: int, rng) -> np.ndarray:
    """(n_boot, n) log losses redrawn from each point's measured noise (standard error in log loss), or the
    points as they are when the noise was not measured."""
    if noise is None:
        return log_loss[None, :]
    return log_loss[None, :] + rng.normal(0.0, 1.0, (n_boot, log_loss.shape[0])) * noise[None, :]


def _bootstrap(
    fit: LawFit, logx: np.ndarray, log_loss: np.ndarray, w: np.ndarray, noise, n_boot: int, seed: int, boot_starts: int
) -> None:
    t0 = time.perf_counter()
    n = log_loss.shape[0]
    rng = np.random.default_rng(seed)
    if noise is None:
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) * w[None, :]
    else:
        counts = w[None, :]
    targets = _boot_targets(log_loss, noise, n_boot, rng)
    grid = fit.law.grid()
    k = min(boot_starts, len(grid))
    picks = rng.integers(0, len(grid), size=(n_boot, k)) if k else np.zeros((n_boot, 0), dtype=np.int64)
    starts = np.concatenate([np.repeat(fit.theta[None, None, :], n_boot, axis=0), grid[picks]], axis=1)
    per = starts.shape[1]
    rows = np.repeat(np.arange(n_boot), per)
    fun = huber_objective(fit.law, logx, targets, counts, fit.delta)

    def by_row(theta: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fun(theta, rows[members])

    res = minimize_lbfgs(by_row, starts.reshape(n_boot * per, -1))
    value = np.where(res.converged, res.fun, np.inf).reshape(n_boot, per)
    ok = np.isfinite(value).any(axis=1)
    choice = np.argmin(value, axis=1)
    theta = res.x.reshape(n_boot, per, -1)[np.arange(n_boot), choice]
    fit.boot_theta = theta[ok]
    fit.boot_info = {
        "n": n_boot,
        "seed": seed,
        "n_converged": int(ok.sum()),
        "start": f"best full-data fit and {k} seeded starts of the grid per resample (the best converged kept)",
        "resampling": "points with replacement (multinomial counts)"
        if noise is None
        else "parametric: every point redrawn from its measured seed noise, the design kept",
        "seconds": round(time.perf_counter() - t0, 3),
    }


def summarize_samples(samples: dict[str, np.ndarray], level: float = 0.95) -> tuple[dict, dict]:
    """Standard errors (sample std) and percentile intervals of every bootstrap quantity."""
    stderr, intervals = {}, {}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    for name, values in samples.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size < 2:
            continue
        stderr[name] = float(np.std(v, ddof=1))
        intervals[name] = [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
    return stderr, intervals


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares line y = intercept + slope x; used for power laws in log-log (N_opt vs C)."""
    slope, intercept = np.polyfit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), 1)
    return float(slope), float(intercept)
