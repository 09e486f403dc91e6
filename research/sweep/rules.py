"""Per-size hyperparameter rules for sweeps (pure functions; research/sweep/resolvers.py feeds them each
member's own N and budget)."""

from __future__ import annotations

import math


def lr_rule(n: float, ref_lr: float, ref_n: float, exponent: float = -1 / 3) -> float:
    """Peak learning rate ref_lr x (N / ref_n)^exponent, to 4 significant digits.

    With exponent -1/3 the rate falls as the cube root of N: 8x the parameters, half the rate. Tuned
    AdamW rates fall with model size (Kaplan et al. 2020's appendix fit; Porian et al. 2024's scaling law
    for the optimal rate; GPT-3's table falls from 6e-4 at 125M to 1e-4 at 13B, about N^-0.36).
    """
    return float(f"{ref_lr * (n / ref_n) ** exponent:.4g}")


def batch_rule(n: float, ref_batch: int, ref_n: float, exponent: float = 0.5, lo: int = 1, hi: int = 1 << 20) -> int:
    """Sequences per batch: ref_batch x (N / ref_n)^exponent rounded (in log2) to a power of two, in [lo, hi].

    Larger models tolerate (and need, for throughput) larger batches (Kaplan et al.'s critical batch;
    Porian et al. 2024 fit the optimal batch growing with N); powers of two keep shapes compile-friendly.
    """
    raw = ref_batch * (n / ref_n) ** exponent
    return int(min(max(2 ** round(math.log2(raw)), lo), hi))


def warmup_rule(steps: int, batch_tokens: int, warmup_tokens: float, max_fraction: float) -> int:
    """Warmup steps covering warmup_tokens, but never more than max_fraction of the run's steps.

    GPT-3 warmed up over a fixed 375M tokens; a fixed warmup is most of a small model's run, which
    Porian et al. 2024 identify as one cause of Kaplan's small-model bias, and they scale the warmup with
    the model (N tokens). The CPU experiments pass ${sweep.n:} as warmup_tokens; the cap keeps the rule
    safe at any size.
    """
    wanted = math.ceil(warmup_tokens / batch_tokens)
    return int(max(0, min(wanted, math.floor(max_fraction * steps))))


def optimum_params(compute: float, tokens_per_param: float = 20.0) -> float:
    """N at the expected compute optimum: C = 6 N D with D = k N gives N = sqrt(C / (6 k))."""
    return math.sqrt(compute / (6.0 * tokens_per_param))


def sci(x: float) -> str:
    """3e+11 -> '3e11', 1.5e+13 -> '1.5e13', 20 -> '20' (labels for run names)."""
    return f"{float(x):.3g}".replace("e+", "e").replace("e0", "e").replace("e-0", "e-")
