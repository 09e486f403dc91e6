"""AdamW and learning-rate schedules (GPT-3 defaults)."""

from __future__ import annotations

import optax

from research.config.schema import OptimConfig
from research.model.params import decay_mask  # by name: matrices and token embedding only


def lr_schedule(o: OptimConfig, steps: int, warmup: int) -> optax.Schedule:
    """Linear warmup, then cosine to min_lr_ratio x peak, constant, or warmup-stable-decay."""
    warmup = min(warmup, max(steps - 1, 0))
    peak, floor = o.lr, o.lr * o.min_lr_ratio
    warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
    rest = max(steps - warmup, 1)
    if o.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=o.min_lr_ratio)
    elif o.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:  # wsd
        decay = max(int(round(o.decay_fraction * rest)), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [rest - decay]
        )
    if warmup == 0:
        return after
    return optax.join_schedules([warm, after], [warmup])


def build_optimizer(o: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    parts = []
    if o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
