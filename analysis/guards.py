"""Validity checks: what the selected points cannot support, and fits whose result says the law does not hold.

Each check returns sentences, each naming the cause and the fix. A fit with any is refused (non-zero exit)
unless --force, which fits anyway and marks the result `"valid": false` with these reasons in fit.json and on
every figure.
"""

from __future__ import annotations

import math

import numpy as np

from analysis.points import Points

SPREAD = 1.1  # a variable whose largest value is within 10% of its smallest does not vary
NOISE_FACTOR = 3.0  # residual RMS above this multiple of the measured noise: the law misses structure
MIN_CONVERGED = 0.95  # bootstrap refits that must converge
UNITS = {"N": "parameters", "D": "tokens", "C": "FLOP"}


def variation_reasons(name: str, variables: tuple[str, ...], pts: Points) -> list[str]:
    """A variable of the law that does not vary; C proportional to N for kaplan_c."""
    reasons = []
    for var in variables:
        x = pts.get(var)
        if x.max() / x.min() < SPREAD:
            reasons.append(
                f"{var} does not vary in the selected points (every one has {var} = {np.median(x):.3g} {UNITS[var]}), "
                f"so {name}'s dependence on {var} cannot be identified; vary {var} (an N x D or IsoFLOP grid), or "
                f"fit --law kaplan_n --irreducible for L(N) at this D."
            )
    if name == "kaplan_c" and pts.D is not None and pts.D.max() / pts.D.min() < SPREAD:
        reasons.append(
            f"C is proportional to N in the selected points (every one has D = {np.median(pts.D):.3g} tokens), so "
            "kaplan_c is kaplan_n relabelled; vary D, or fit --law kaplan_n."
        )
    return reasons


def data_reasons(
    name: str, variables: tuple[str, ...], n_params: int, pts: Points, check_variation: bool = True
) -> list[str]:
    """Before fitting: variables that do not vary or move in lockstep, too few points."""
    reasons = variation_reasons(name, variables, pts) if check_variation else []
    if set(variables) == {"N", "D"} and not reasons and check_variation:
        r = np.corrcoef(np.log(pts.get("N")), np.log(pts.get("D")))[0, 1]
        if abs(r) > 0.99:
            tpp = pts.get("D") / pts.get("N")
            reasons.append(
                f"log D moves in lockstep with log N in the selected points (correlation {r:+.3f}; D/N from "
                f"{tpp.min():.3g} to {tpp.max():.3g}), so the N and D terms cannot be separated; vary D/N (an IsoFLOP "
                "or N x D grid)."
            )
    if len(pts) < n_params + 2:
        reasons.append(
            f"law {name} has {n_params} parameters but the selection gives only {len(pts)} points; a fit needs at "
            f"least {n_params + 2} to leave room for its checks: add runs or widen the selection."
        )
    return reasons


def fit_reasons(
    name: str,
    params: dict[str, float],
    pts: Points,
    log_residuals: np.ndarray,
    n_boot: int,
    n_boot_converged: int,
) -> list[str]:
    """After fitting: E above the data, an exponent of impossible sign, unconverged bootstrap, misfit vs noise."""
    reasons = []
    if "E" in params and params["E"] > pts.loss.min():
        reasons.append(
            f"the fitted irreducible loss E = {params['E']:.4g} lies above the lowest measured loss "
            f"{pts.loss.min():.4g}, so the law does not describe these points; leave out runs that did not train "
            "well, or fit a narrower range (--min-compute, --tpp-range)."
        )
    for key in ("alpha", "beta", "alpha_N", "alpha_D", "alpha_C"):
        if key in params and not params[key] > 0:
            reasons.append(
                f"the fitted exponent {key} = {params[key]:.3g} is not positive, which says loss does not fall with "
                f"{key[-1] if key.startswith('alpha_') else ('N' if key == 'alpha' else 'D')}; check the runs for "
                "failed training or a mislabelled column."
            )
    reasons += bootstrap_reasons(n_boot, n_boot_converged)
    reasons += noise_reasons(log_residuals, pts)
    return reasons


def bootstrap_reasons(n_boot: int, n_converged: int) -> list[str]:
    if n_boot and n_converged < MIN_CONVERGED * n_boot:
        return [
            f"only {n_converged} of {n_boot} bootstrap refits converged ({n_converged / n_boot:.0%}, below "
            f"{MIN_CONVERGED:.0%}), so the intervals cannot be trusted; use a law with fewer parameters or add points."
        ]
    return []


def noise_level(pts: Points) -> float | None:
    """The typical measured noise of a point's loss, in log loss (median standard error / loss); None if unknown."""
    se = pts.stderr
    if se is None:
        return None
    rel = se / pts.loss
    rel = rel[np.isfinite(rel) & (rel > 0)]
    return float(np.median(rel)) if rel.size else None


def noise_reasons(log_residuals: np.ndarray, pts: Points) -> list[str]:
    noise = noise_level(pts)
    rms = float(np.sqrt(np.mean(np.square(log_residuals))))
    if noise is None or not math.isfinite(rms) or rms <= NOISE_FACTOR * noise:
        return []
    return [
        f"the fit's residuals (RMS {rms:.3g} in log loss) are {rms / noise:.1f}x the measured noise of the points "
        f"({noise:.3g}), so the law misses structure in the data; fit a narrower range or a law with an irreducible "
        "term."
    ]


def allocation_reasons(params: dict[str, float], n_boot: int, n_converged: int) -> list[str]:
    """IsoFLOP and envelope fits: N_opt and D_opt must both grow with compute."""
    reasons = []
    for key, what in (("a", "N_opt"), ("b", "D_opt")):
        value = params.get(key)
        if value is not None and math.isfinite(value) and not 0 < value < 1:
            reasons.append(
                f"the fitted exponent {key} = {value:.3g} puts {what} ~ C^{value:.3g} outside (0, 1), which C = 6 N D "
                "does not allow for a compute-optimal model; check the budgets (--budgets, --isoflop-window) and "
                "drop minima at the edge of their sizes."
            )
    return reasons + bootstrap_reasons(n_boot, n_converged)


CHECKS = {
    "variation": (
        "every variable of the law varies (and N and D do not move in lockstep)",
        ("does not vary", "C is proportional", "moves in lockstep"),
    ),
    "count": ("at least parameters + 2 points", ("parameters but the selection",)),
    "floor": ("the irreducible loss E lies below every measured loss", ("the fitted irreducible loss",)),
    "sign": ("every exponent has the sign that makes loss fall", ("the fitted exponent",)),
    "bootstrap": ("at least 95% of the bootstrap refits converged", ("bootstrap refits converged",)),
    "noise": ("the residuals within 3x the measured noise of the points", ("the fit's residuals",)),
}


def applied_checks(params: dict[str, float], pts: Points | None, n_boot: int, reasons: list[str]) -> list[dict]:
    """fit.json's `checks`: each validity check with passed, failed, or why it did not apply."""
    out = []
    for key, (what, marks) in CHECKS.items():
        failed = any(m in r for r in reasons for m in marks)
        status = "failed" if failed else "passed"
        if key == "floor" and "E" not in params:
            status = "not applicable (the law has no E)"
        elif key == "bootstrap" and not n_boot:
            status = "not applicable (no bootstrap)"
        elif key == "noise" and (pts is None or noise_level(pts) is None):
            status = "not applicable (the records measure no noise: no seeds, no evaluation errors)"
        out.append({"check": key, "what": what, "status": status})
    return out
