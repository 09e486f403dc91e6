"""Functional forms of the scaling laws, written for batched fitting in log space.

Every law maps an internal parameter vector theta (the space the optimiser works in, chosen so that
log L is a log-sum-exp of terms linear in theta where possible) to the log of the predicted loss,
together with the Jacobian d log L / d theta; it also maps theta to the published parameters
(E, A, B, alpha, beta; N_c, alpha_N; ...) and back, and supplies its grid of starting points.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# d log L / d theta_p = coef_BN * feature_N, either factor may be None (meaning 1). Keeping the per-point
# feature (e.g. -log N) separate turns the gradient sum into a matrix-vector product.
JacTerm = tuple[np.ndarray | None, np.ndarray | None]
# log_pred(theta_BP, logx_VN) -> (log L_BN, one JacTerm per parameter)
LogPred = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, list[JacTerm]]]


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    variables: tuple[str, ...]  # which of N, D, C the law reads, in the order of logx rows
    theta_names: tuple[str, ...]
    param_names: tuple[str, ...]
    log_pred: LogPred
    to_params: Callable[[np.ndarray], dict[str, np.ndarray]]
    from_params: Callable[[dict[str, float]], np.ndarray]
    grid_axes: dict[str, list[float]] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return len(self.theta_names)

    def grid(self) -> np.ndarray:
        """All combinations of the per-parameter grid values, as starts (n_starts, P) in theta order."""
        axes = [self.grid_axes[name] for name in self.theta_names]
        return np.array(list(itertools.product(*axes)), dtype=np.float64)

    def predict(self, params: dict[str, float], **variables: np.ndarray) -> np.ndarray:
        """Loss predicted by the law at the given N / D / C (arrays broadcast together)."""
        theta = self.from_params(params)[None, :]
        arrays = np.broadcast_arrays(*[np.asarray(variables[v], dtype=np.float64) for v in self.variables])
        shape = arrays[0].shape
        logx = np.stack([np.log(a.ravel()) for a in arrays])
        log_l, _ = self.log_pred(theta, logx)
        return np.exp(log_l[0]).reshape(shape)


def _softmax_terms(terms: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """log-sum-exp of same-shaped arrays and the softmax weight of each (the gradient of the LSE)."""
    stacked = np.stack(np.broadcast_arrays(*terms))
    peak = stacked.max(axis=0)
    weights = np.exp(stacked - peak)
    total = weights.sum(axis=0)
    weights /= total
    return peak + np.log(total), list(weights)


def _log_pred_chinchilla(theta: np.ndarray, logx: np.ndarray) -> tuple[np.ndarray, list[JacTerm]]:
    a, b, e, alpha, beta = (theta[:, k, None] for k in range(5))
    log_n, log_d = logx[0], logx[1]
    t_n, t_d = a - alpha * log_n, b - beta * log_d
    peak = np.maximum(np.maximum(t_n, t_d), e)
    w_n, w_d, w_e = np.exp(t_n - peak), np.exp(t_d - peak), np.exp(e - peak)
    total = w_n + w_d + w_e
    w_n /= total
    w_d /= total
    w_e /= total
    return peak + np.log(total), [(w_n, None), (w_d, None), (w_e, None), (w_n, -log_n), (w_d, -log_d)]


def _log_pred_power(theta: np.ndarray, logx: np.ndarray) -> tuple[np.ndarray, list[JacTerm]]:
    c, alpha = theta[:, 0, None], theta[:, 1, None]
    return c - alpha * logx[0], [(None, None), (None, -logx[0])]


def _log_pred_power_e(theta: np.ndarray, logx: np.ndarray) -> tuple[np.ndarray, list[JacTerm]]:
    a, alpha, e = theta[:, 0, None], theta[:, 1, None], theta[:, 2, None]
    out, (w_x, w_e) = _softmax_terms([a - alpha * logx[0], e + 0.0 * logx[0]])
    return out, [(w_x, None), (w_x, -logx[0]), (w_e, None)]


def _log_pred_kaplan_nd(theta: np.ndarray, logx: np.ndarray) -> tuple[np.ndarray, list[JacTerm]]:
    # L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D  (Kaplan et al. 2020, eq. 1.5)
    log_nc, log_dc, alpha_n, alpha_d = (theta[:, k, None] for k in range(4))
    log_n, log_d = logx[0][None, :], logx[1][None, :]
    t_n = (alpha_n / alpha_d) * (log_nc - log_n)
    lse, (w_n, w_d) = _softmax_terms([t_n, log_dc - log_d])
    jac = [(alpha_n * w_n, None), (alpha_d * w_d, None), (w_n * (log_nc - log_n), None), (lse - w_n * t_n, None)]
    return alpha_d * lse, jac


def chinchilla() -> Law:
    def to_params(theta: np.ndarray) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        return {
            "E": np.exp(theta[:, 2]),
            "A": np.exp(theta[:, 0]),
            "B": np.exp(theta[:, 1]),
            "alpha": theta[:, 3],
            "beta": theta[:, 4],
        }

    def from_params(p: dict[str, float]) -> np.ndarray:
        return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])

    # The Epoch replication's grid: 5 x 5 x 5 x 6 x 6 = 4,500 starts.
    axes = {
        "a": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
        "b": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
        "e": [-1.0, -0.5, 0.0, 0.5, 1.0],
        "alpha": [0.0, 0.5, 1.0, 1.5, 2.0],
        "beta": [0.0, 0.5, 1.0, 1.5, 2.0],
    }
    return Law(
        "chinchilla",
        "L(N, D) = E + A / N^alpha + B / D^beta",
        ("N", "D"),
        ("a", "b", "e", "alpha", "beta"),
        ("E", "A", "B", "alpha", "beta"),
        _log_pred_chinchilla,
        to_params,
        from_params,
        axes,
    )


def power_law(variable: str, irreducible: bool = False) -> Law:
    """Kaplan's L(X) = (X_c / X)^alpha_X, or with an irreducible term L(X) = E + A / X^alpha_X."""
    alpha = f"alpha_{variable}"
    if not irreducible:

        def to_params(theta: np.ndarray) -> dict[str, np.ndarray]:
            theta = np.atleast_2d(theta)
            # log L = c - alpha log X with c = alpha log X_c.
            return {f"{variable}_c": np.exp(theta[:, 0] / theta[:, 1]), alpha: theta[:, 1]}

        def from_params(p: dict[str, float]) -> np.ndarray:
            return np.array([p[alpha] * np.log(p[f"{variable}_c"]), p[alpha]])

        axes = {"c": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0], "alpha": [0.0, 0.5, 1.0, 1.5, 2.0]}
        return Law(
            f"kaplan_{variable.lower()}",
            f"L({variable}) = ({variable}_c / {variable})^{alpha}",
            (variable,),
            ("c", "alpha"),
            (f"{variable}_c", alpha),
            _log_pred_power,
            to_params,
            from_params,
            axes,
        )

    def to_params_e(theta: np.ndarray) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        return {"E": np.exp(theta[:, 2]), "A": np.exp(theta[:, 0]), alpha: theta[:, 1]}

    def from_params_e(p: dict[str, float]) -> np.ndarray:
        return np.array([np.log(p["A"]), p[alpha], np.log(p["E"])])

    axes = {
        "a": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
        "alpha": [0.0, 0.5, 1.0, 1.5, 2.0],
        "e": [-1.0, -0.5, 0.0, 0.5, 1.0],
    }
    return Law(
        f"kaplan_{variable.lower()}",
        f"L({variable}) = E + A / {variable}^{alpha}",
        (variable,),
        ("a", "alpha", "e"),
        ("E", "A", alpha),
        _log_pred_power_e,
        to_params_e,
        from_params_e,
        axes,
    )


def kaplan_nd() -> Law:
    def to_params(theta: np.ndarray) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        return {"N_c": np.exp(theta[:, 0]), "D_c": np.exp(theta[:, 1]), "alpha_N": theta[:, 2], "alpha_D": theta[:, 3]}

    def from_params(p: dict[str, float]) -> np.ndarray:
        return np.array([np.log(p["N_c"]), np.log(p["D_c"]), p["alpha_N"], p["alpha_D"]])

    # alpha_D divides, so its grid stays away from 0.
    axes = {
        "log_N_c": [15.0, 20.0, 25.0, 30.0, 35.0],
        "log_D_c": [15.0, 20.0, 25.0, 30.0, 35.0],
        "alpha_N": [0.05, 0.1, 0.2, 0.5, 1.0],
        "alpha_D": [0.05, 0.1, 0.2, 0.5, 1.0],
    }
    return Law(
        "kaplan_nd",
        "L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D",
        ("N", "D"),
        ("log_N_c", "log_D_c", "alpha_N", "alpha_D"),
        ("N_c", "D_c", "alpha_N", "alpha_D"),
        _log_pred_kaplan_nd,
        to_params,
        from_params,
        axes,
    )


LOSS_LAWS = ("chinchilla", "kaplan_n", "kaplan_c", "kaplan_d", "kaplan_nd")


def get_law(name: str, irreducible: bool = False) -> Law:
    """The law named on the command line; `irreducible` adds E to the single-variable Kaplan laws."""
    if name == "chinchilla":
        return chinchilla()
    if name == "kaplan_nd":
        return kaplan_nd()
    if name in ("kaplan_n", "kaplan_c", "kaplan_d"):
        return power_law(name[-1].upper(), irreducible)
    raise ValueError(f"unknown law {name!r}; choose one of {', '.join(LOSS_LAWS)}.")


def chinchilla_allocation(params: dict[str, np.ndarray], compute: np.ndarray) -> dict[str, np.ndarray]:
    """Compute-optimal allocation implied by L(N, D) under C = 6 N D (Hoffmann et al. 2022, eq. 4).

    N_opt(C) = G (C/6)^a and D_opt(C) = G^-1 (C/6)^b with a = beta/(alpha+beta), b = alpha/(alpha+beta),
    G = (alpha A / (beta B))^(1/(alpha+beta)). Parameters and compute broadcast together (e.g. bootstrap
    samples as a column against a row of budgets).
    """
    alpha, beta = np.asarray(params["alpha"]), np.asarray(params["beta"])
    big_a, big_b, big_e = np.asarray(params["A"]), np.asarray(params["B"]), np.asarray(params["E"])
    with np.errstate(all="ignore"):
        a = beta / (alpha + beta)
        b = alpha / (alpha + beta)
        log_g = (np.log(alpha * big_a) - np.log(beta * big_b)) / (alpha + beta)
        log_c6 = np.log(np.asarray(compute, dtype=np.float64) / 6.0)
        n_opt = np.exp(log_g + a * log_c6)
        d_opt = np.exp(b * log_c6 - log_g)
        loss_opt = big_e + big_a / n_opt**alpha + big_b / d_opt**beta
    return {"a": a, "b": b, "G": np.exp(log_g), "N_opt": n_opt, "D_opt": d_opt, "loss_opt": loss_opt}


def chinchilla_derived(params: dict[str, np.ndarray], compute: list[float]) -> dict[str, np.ndarray]:
    """a, b, G and, at each requested compute, N_opt, D_opt, tokens per parameter and the optimal loss.

    Works elementwise on arrays of parameters (bootstrap samples); keys read e.g. "tokens_per_param@5.88e+23".
    """
    out: dict[str, np.ndarray] = {}
    for c in compute:
        alloc = chinchilla_allocation(params, np.float64(c))
        out.update({"a": alloc["a"], "b": alloc["b"], "G": alloc["G"]})
        key = f"{c:.3g}"
        out[f"N_opt@{key}"], out[f"D_opt@{key}"] = alloc["N_opt"], alloc["D_opt"]
        with np.errstate(all="ignore"):
            out[f"tokens_per_param@{key}"] = alloc["D_opt"] / alloc["N_opt"]
        out[f"loss_opt@{key}"] = alloc["loss_opt"]
    if not compute:
        alloc = chinchilla_allocation(params, np.float64(1.0))
        out.update({"a": alloc["a"], "b": alloc["b"], "G": alloc["G"]})
    return out
