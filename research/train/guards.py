"""Bad steps: non-finite losses and loss spikes, found inside the jitted step, handled by policy.

Device side (`guard_step`, inside jit): a few scalars in the train state keep an exponential
moving mean and variance of the loss and cumulative counters. A step is *bad* when its loss or
gradient norm is NaN/Inf, or its loss exceeds mean + spike_factor x std once spike_window finite
losses have been folded in. A bad step never updates the parameters or the optimizer state
(`jnp.where`, fused into the update), whatever the policy, so nothing non-finite can reach them.

Host side (`Monitor`): the loop reads the counters only when it already synchronises (log,
eval and checkpoint steps, "checks"), never once per step. At a check it compares them with the
previous check and applies train.nan_policy:
  skip      the bad updates were dropped; warn and go on;
  rollback  restore parameters, optimizer state and RNG from the newest checkpoint saved at a
            clean check, keep the step counter and the loader where they are (so the batches
            between that checkpoint and now, the offending ones among them, are skipped), go on;
  stop      once max_bad_steps consecutive steps were bad, stop with a message naming the step
            and its batch.
Step numbers never go back (a rollback restores weights, not the step), so metrics.jsonl,
TensorBoard and checkpoints stay monotonic, and step s always trains on batch s of the stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

log = logging.getLogger("train")

NONFINITE, SPIKE = 1, 2
_KIND = {NONFINITE: "a non-finite loss or gradient", SPIKE: "a loss spike"}


@struct.dataclass
class GuardState:
    loss_mean: jax.Array  # float32 EMA of finite losses
    loss_var: jax.Array  # float32 EMA of the squared deviation
    n_seen: jax.Array  # int32 finite losses folded in
    nonfinite: jax.Array  # int32 cumulative bad steps with NaN/Inf loss or gradient norm
    spikes: jax.Array  # int32 cumulative (finite) loss spikes
    skipped: jax.Array  # int32 cumulative updates dropped in the step (= nonfinite + spikes)
    streak: jax.Array  # int32 consecutive bad steps up to now
    streak_step: jax.Array  # int32 first step at which streak reached max_bad_steps; -1 if never
    last_bad_step: jax.Array  # int32; -1 if none
    last_bad_kind: jax.Array  # int32 NONFINITE | SPIKE; 0 if none


def init_guard() -> GuardState:
    i = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return GuardState(f(0.0), f(0.0), i(0), i(0), i(0), i(0), i(0), i(-1), i(-1), i(0))


@dataclass(frozen=True)
class GuardConfig:
    spike_factor: float = 6.0
    spike_window: int = 100
    max_bad_steps: int = 3

    @classmethod
    def from_train(cls, t: Any) -> GuardConfig:
        return cls(float(t.spike_factor), int(t.spike_window), int(t.max_bad_steps))


def guard_step(
    g: GuardState, step: jax.Array, loss: jax.Array, grad_norm: jax.Array, cfg: GuardConfig
) -> tuple[jax.Array, GuardState]:
    """(ok, new guard state) for `step` (the step just computed, 1-based). Traced inside jit."""
    loss = loss.astype(jnp.float32)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    std = jnp.maximum(jnp.sqrt(g.loss_var), 0.01 * jnp.abs(g.loss_mean))  # floor: a flat loss is not noise-free
    ceiling = g.loss_mean + cfg.spike_factor * std
    armed = (g.n_seen >= cfg.spike_window) & (cfg.spike_factor > 0)
    spike = finite & armed & (loss > ceiling)
    bad = ~finite | spike

    # Fold finite losses into the statistics; a spike enters clipped to the ceiling, so a real
    # level shift is followed (no endless skipping) while one outlier cannot blow up the variance.
    x = jnp.where(armed, jnp.minimum(loss, ceiling), loss)
    x = jnp.where(finite, x, g.loss_mean)
    alpha = jnp.maximum(1.0 / (g.n_seen + 1).astype(jnp.float32), 1.0 / cfg.spike_window)
    delta = x - g.loss_mean
    mean = jnp.where(finite, g.loss_mean + alpha * delta, g.loss_mean)
    var = jnp.where(finite, (1.0 - alpha) * (g.loss_var + alpha * delta * delta), g.loss_var)

    streak = jnp.where(bad, g.streak + 1, 0)
    step = step.astype(jnp.int32)
    new = GuardState(
        loss_mean=mean,
        loss_var=var,
        n_seen=g.n_seen + finite.astype(jnp.int32),
        nonfinite=g.nonfinite + (~finite).astype(jnp.int32),
        spikes=g.spikes + spike.astype(jnp.int32),
        skipped=g.skipped + bad.astype(jnp.int32),
        streak=streak,
        streak_step=jnp.where((g.streak_step < 0) & (streak >= cfg.max_bad_steps), step, g.streak_step),
        last_bad_step=jnp.where(bad, step, g.last_bad_step),
        last_bad_kind=jnp.where(bad, jnp.where(finite, SPIKE, NONFINITE), g.last_bad_kind),
    )
    return ~bad, new


def select(ok: jax.Array, new: Any, old: Any) -> Any:
    """`new` where the step was good, else `old`, leaf by leaf (fuses into the update)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def guard_metrics(g: GuardState) -> dict[str, jax.Array]:
    return {
        "nonfinite_steps": g.nonfinite,
        "spike_steps": g.spikes,
        "guard_skipped": g.skipped,
        "guard_streak_step": g.streak_step,
        "guard_last_bad_step": g.last_bad_step,
        "guard_last_bad_kind": g.last_bad_kind,
    }


# ---------------------------------------------------------------------------------------------
# Host side


@dataclass
class Verdict:
    clean: bool  # no bad step since the previous check
    rollback: bool = False
    stop_message: str | None = None


class Monitor:
    """Reads the guard counters at checks and decides what the loop does (see module docstring)."""

    def __init__(self, policy: str, max_bad_steps: int, max_rollbacks: int, describe_batch: Any) -> None:
        self.policy = policy
        self.max_bad_steps = max_bad_steps
        self.max_rollbacks = max_rollbacks
        self.describe_batch = describe_batch  # step -> "batch ... (windows ...)"
        self.seen_skipped = 0  # guard.skipped at the previous acting check
        self.rollbacks = 0
        self.rolled_back = 0  # good updates discarded by rollbacks

    # persisted in checkpoint metadata so a resumed run decides exactly as an uninterrupted one
    def state(self) -> dict[str, int]:
        return {"seen_skipped": self.seen_skipped, "rollbacks": self.rollbacks, "rolled_back": self.rolled_back}

    def load(self, saved: dict[str, Any] | None) -> None:
        saved = saved or {}
        self.seen_skipped = int(saved.get("seen_skipped", 0))
        self.rollbacks = int(saved.get("rollbacks", 0))
        self.rolled_back = int(saved.get("rolled_back", 0))

    def counts(self, m: dict[str, Any]) -> dict[str, int]:
        """The counts for metrics.jsonl, TensorBoard and results.json."""
        return {
            "nonfinite_steps": int(m["nonfinite_steps"]),
            "spike_steps": int(m["spike_steps"]),
            "skipped_steps": int(m["guard_skipped"]) + self.rolled_back,
            "rollbacks": self.rollbacks,
        }

    def peek(self, m: dict[str, Any]) -> bool:
        """Clean since the previous acting check? (for saves that must not change the run's course)"""
        return int(m["guard_skipped"]) == self.seen_skipped

    def check(self, step: int, m: dict[str, Any]) -> Verdict:
        """An acting check at `step` (deterministic steps only: log, eval, checkpoint, last)."""
        skipped = int(m["guard_skipped"])
        new_bad = skipped - self.seen_skipped
        self.seen_skipped = skipped
        if new_bad <= 0:
            return Verdict(clean=True)
        last, kind = int(m["guard_last_bad_step"]), _KIND.get(int(m["guard_last_bad_kind"]), "a bad step")
        where = f"the last at step {last} ({kind}, {self.describe_batch(last)})"
        if self.policy == "stop" and int(m["guard_streak_step"]) >= 0:
            s = int(m["guard_streak_step"])
            return Verdict(
                clean=False,
                stop_message=(
                    f"training stopped: {self.max_bad_steps} consecutive bad steps ending at step {s} "
                    f"({_KIND.get(int(m['guard_last_bad_kind']), 'bad')}, {self.describe_batch(s)}); the parameters "
                    f"are those from before the streak; lower optim.lr, or set train.nan_policy=skip or rollback to "
                    f"train past these batches."
                ),
            )
        if self.policy == "rollback":
            if self.rollbacks >= self.max_rollbacks:
                return Verdict(
                    clean=False,
                    stop_message=(
                        f"training stopped: bad steps kept coming after {self.rollbacks} rollbacks ({new_bad} since the "
                        f"previous check, {where}); lower optim.lr or raise train.max_rollbacks."
                    ),
                )
            log.warning("%d bad step(s) up to step %d, %s: rolling back to the last checkpoint", new_bad, step, where)
            return Verdict(clean=False, rollback=True)
        log.warning("%d bad step(s) up to step %d, %s: their updates were skipped", new_bad, step, where)
        return Verdict(clean=False)

    def rolled_back_to(self, from_step: int, to_step: int, skipped_then: int, skipped_now: int) -> None:
        """Record a rollback from from_step to the checkpoint at to_step (guard.skipped there/now)."""
        self.rollbacks += 1
        # updates discarded: every step in (to_step, from_step] minus those the guard already dropped
        self.rolled_back += (from_step - to_step) - (skipped_now - skipped_then)
