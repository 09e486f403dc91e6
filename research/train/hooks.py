"""What the training loop does between steps, each on its own cadence: log rows, evaluation, checkpoints,
the bad-step policy, and the stop on a signal.

The loop (research/train/loop.py) asks the `Schedule` which of them are due after a step; when none is,
it goes straight on without syncing with the device. When one is, the step's metrics are fetched once
and the hooks run in a fixed order: the bad-step check (which may roll back), the metrics row (with an
evaluation on eval steps), then the checkpoint (whose 'verified' flag depends on that check).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from research import flops
from research.checkpoint import Checkpointer
from research.data import bits_per_byte
from research.train.guards import Monitor, Verdict

log = logging.getLogger("train")


@dataclasses.dataclass(frozen=True)
class Due:
    """What runs after one step."""

    log: bool
    eval: bool
    checkpoint: bool  # a checkpoint step (deterministic: every train.checkpoint_every, and the last)
    timed: bool  # a checkpoint because train.checkpoint_minutes passed
    stop: bool  # a signal asked the run to stop

    @property
    def acting(self) -> bool:
        """A deterministic step: the only kind that acts on bad steps (log, eval, checkpoint, the last)."""
        return self.log or self.eval or self.checkpoint

    @property
    def save(self) -> bool:
        return self.checkpoint or self.timed or self.stop

    @property
    def any(self) -> bool:
        return self.acting or self.timed or self.stop


class Schedule:
    def __init__(self, train: Any, steps: int, ckpt: Checkpointer) -> None:
        self.log_every, self.eval_every, self.ckpt_every = train.log_every, train.eval_every, train.checkpoint_every
        self.steps, self.ckpt = steps, ckpt

    def at(self, step: int, stop: bool) -> Due:
        last = step == self.steps
        is_log = step % self.log_every == 0 or last
        is_ckpt = step % self.ckpt_every == 0 or last
        timed = not is_ckpt and time_due(self.ckpt, is_log)
        return Due(is_log, step % self.eval_every == 0 or last, is_ckpt, timed, stop)


def time_due(ckpt: Checkpointer, is_log: bool) -> bool:
    """Time-based save? Every step on one host; on several, at log steps and as process 0 decides."""
    if jax.process_count() == 1:
        return ckpt.time_due()
    if not is_log:
        return False
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(ckpt.time_due())))


def evaluate(
    eval_step: Any, params: Any, val_batches: list[Any], bytes_per_token: float, by_source: Any = None
) -> dict[str, float]:
    """Mean validation loss over a fixed slice, its standard error across sequences, and bits per byte; with
    by_source (each row's source, the names, each source's bytes per token) also val_loss/<source> and
    val_bpb/<source>."""
    per_seq = np.concatenate([np.asarray(eval_step(params, b)) for b in val_batches])
    loss = float(per_seq.mean())
    stderr = float(per_seq.std(ddof=1) / math.sqrt(len(per_seq))) if len(per_seq) > 1 else float("nan")
    out = {"val_loss": loss, "val_loss_stderr": stderr, "val_bpb": bits_per_byte(loss, bytes_per_token)}
    if by_source is not None:
        rows, names, source_bpt = by_source
        labels = np.concatenate(rows)[: len(per_seq)]
        for i, name in enumerate(names):
            mine = per_seq[labels == i]
            if mine.size:
                out[f"val_loss/{name}"] = float(mine.mean())
                out[f"val_bpb/{name}"] = bits_per_byte(float(mine.mean()), source_bpt[i])
    return out


class MetricsHook:
    """One row per log or eval step: metrics.jsonl, TensorBoard, the progress bar; `last` keeps what the
    rows said last (the run's final figures)."""

    def __init__(
        self,
        *,
        batch_tokens: int,
        params_nonembed: int,
        flops_per_token: float,
        peak: float | None,
        writers: Any,
        evaluation: Any,
        last: dict[str, Any],
        start_step: int,
    ) -> None:
        self.batch_tokens, self.params_nonembed = batch_tokens, params_nonembed
        self.flops_per_token, self.peak = flops_per_token, peak
        self.writers, self.evaluation, self.last = writers, evaluation, last
        self.window_start: float | None = None
        self.window_step = start_step

    def open_window(self, step: int) -> None:
        """The throughput window opens after the first step (its warm-up)."""
        self.window_start, self.window_step = time.perf_counter(), step

    def __call__(self, step: int, m: dict[str, Any], health: dict[str, int], params: Any, is_eval: bool) -> None:
        now = time.perf_counter()
        if step > self.window_step and self.window_start is not None:
            self.last["tokens_per_second"] = (step - self.window_step) * self.batch_tokens / (now - self.window_start)
            self.window_start, self.window_step = now, step
        tps = self.last.get("tokens_per_second")
        row = {
            "step": step,
            "tokens": step * self.batch_tokens,
            "flops": 6 * self.params_nonembed * step * self.batch_tokens,
            **{k: float(m[k]) for k in ("loss", "lr", "grad_norm")},
            "tokens_per_second": tps,
            "mfu": flops.mfu(tps, self.flops_per_token, self.peak) if tps and self.peak else None,
            **health,
        }
        if is_eval:
            row.update(self.evaluation(params))
        self.last.update(row)
        self.writers.write(step, row)


class CheckpointHook:
    def __init__(
        self, ckpt: Checkpointer, loader: Any, monitor: Monitor, policy: str, meta: dict[str, Any], steps: int
    ) -> None:
        self.ckpt, self.loader, self.monitor, self.policy, self.meta, self.steps = (
            ckpt,
            loader,
            monitor,
            policy,
            meta,
            steps,
        )

    def __call__(self, step: int, state: Any, due: Due, verdict: Verdict) -> None:
        meta = {**self.meta, "health": self.monitor.state(), "wall_time": time.time()}
        # a rollback may return only to a state saved at a deterministic, clean check
        verified = due.acting and (self.policy != "rollback" or verdict.clean or verdict.rollback)
        wait = step == self.steps or due.stop
        self.ckpt.save(step, state, self.loader.get_state(), meta, verified=verified, wait=wait)


def rollback(
    state: Any, step: int, skipped_now: int, ckpt: Checkpointer, target: Any, monitor: Monitor, fresh_state: Any
) -> Any:
    """Weights, optimizer state and RNG from the newest verified checkpoint (or the initial state), with the
    loss statistics that belong to those weights; the step counter, the bad-step counters and the loader
    stay where they are."""
    step_arr, guard = state.step, state.guard
    for x in jax.tree.leaves((state.params, state.opt_state, state.rng)):  # free before restoring
        x.delete()
    restored = ckpt.restore_latest(target, verified_only=True)
    to_step, new = (0, fresh_state()) if restored is None else restored[:2]
    monitor.rolled_back_to(step, to_step, int(jax.device_get(new.guard.skipped)), skipped_now)
    log.warning(
        "rolled back to the weights of step %d; the batches of steps %d..%d are skipped", to_step, to_step + 1, step
    )
    guard = guard.replace(
        loss_mean=new.guard.loss_mean,
        loss_var=new.guard.loss_var,
        n_seen=new.guard.n_seen,
        streak=jnp.zeros_like(guard.streak),
    )
    return new.replace(step=step_arr, guard=guard)


class RunWriters:
    """metrics.jsonl, TensorBoard events (process 0 only) and the progress bar, written together."""

    def __init__(self, jsonl: Any, tb: Any, progress: Any) -> None:
        self.jsonl, self.tb, self.progress = jsonl, tb, progress

    def write(self, step: int, row: dict[str, Any]) -> None:
        if self.jsonl:
            self.jsonl.write(row)
        if self.tb:
            self.tb.scalars(step, row)
            self.tb.flush()
        self.progress.show(row)

    def close(self) -> None:
        self.progress.close()
        for w in (self.tb, self.jsonl):
            if w is not None:
                w.close()
