"""AdamW and learning-rate schedules (GPT-3 defaults)."""

from __future__ import annotations

import optax

from research.config.schema import OptimConfig
from research.model.params import decay_mask  # by name: matrices and token embedding only


def lr_schedule(optim: OptimConfig, steps: int, warmup: int) -> optax.Schedule:
    """Linear warmup, then cosine to min_lr_ratio x peak, constant, or warmup-stable-decay."""
    warmup = min(warmup, max(steps - 1, 0))
    peak, floor = optim.lr, optim.lr * optim.min_lr_ratio
    warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
    rest = max(steps - warmup, 1)
    if optim.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=optim.min_lr_ratio)
    elif optim.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:  # wsd
        decay = max(int(round(optim.decay_fraction * rest)), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [rest - decay]
        )
    if warmup == 0:
        return after
    return optax.join_schedules([warm, after], [warmup])


def build_optimizer(optim: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    parts = []
    if optim.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(
        optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts)
