"""One training run: config -> data -> sharded state -> steps with hooks -> records.

    results = run(cfg, run_dir, resolved_config)      # results.json's fields; the directory holds the rest

`run` owns the record's lifecycle (running -> completed | failed | running after a signal); `_train`
sets the run up (data, programs, restore, writers) and `_steps` is the step loop, which syncs with
the device only at steps where a hook is due (research/train/hooks.py).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import OmegaConf

from research import data as data_lib
from research import flops
from research.budget import Budget, budget
from research.checkpoint import Checkpointer
from research.config.schema import Config
from research.config.validate import validate
from research.errors import BadStepsError, ConfigError, UserError
from research.metrics import JsonlWriter, TensorBoardWriter, read_jsonl
from research.parallel import distributed
from research.train import preflight, programs, records
from research.train.guards import Monitor, Verdict, guard_metrics
from research.train.hooks import CheckpointHook, MetricsHook, RunWriters, Schedule, evaluate, rollback
from research.train.progress import Progress
from research.train.restore import restore_state
from research.train.signals import Preempted, SignalFlag

log = logging.getLogger("train")
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO

_POISON = {"nan": float("nan"), "inf": float("inf"), "spike": 100.0}


def run(
    cfg: Config,
    run_dir: Path,
    resolved_config: dict[str, Any] | None = None,
    *,
    on_compiled: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Train one run in run_dir; always leaves results.json (status completed, failed or running), except when
    the directory itself is unusable or holds a different run (ConfigError, nothing written). A run directory
    whose record says completed is skipped by the entry point before it calls this (records.existing_run).
    `on_compiled` is called once the programs are compiled (a sweep's compile-ahead waits for it)."""
    distributed.maybe_initialize()  # several processes (SLURM, JAX_* variables): before any other JAX use
    config = resolved_config if resolved_config is not None else OmegaConf.to_container(OmegaConf.structured(cfg))
    is_main = jax.process_index() == 0
    if is_main:
        preflight.check_run_dir(run_dir, config)
    started = time.time()
    record = records.RunRecord(run_dir, write=is_main)
    record.update(
        status="running",
        experiment=cfg.train.experiment,
        run_name=cfg.train.run_name,
        model=cfg.model.name,
        config=config,
        git_sha=records.git_sha(),
        device=jax.devices()[0].device_kind,
        n_devices=jax.device_count(),
    )
    record.save()
    try:
        _train(cfg, run_dir, record, is_main, on_compiled)
        record.update(status="completed")
    except Preempted:
        record.update(
            status="running", error="preempted: stopped by a signal after saving a checkpoint; rerun to resume"
        )
    except (SystemExit, KeyboardInterrupt):  # e.g. Ctrl-C before the loop: the last checkpoint stands
        record.update(status="running", error="interrupted; rerun to resume from the last checkpoint")
        raise
    except BaseException as e:
        record.update(status="failed", error=str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
        raise
    finally:
        record.update(wall_seconds=record.get("wall_seconds") or round(time.time() - started, 3))
        record.save()
    return dict(record.fields)


@dataclasses.dataclass
class Session:
    """Everything the step loop works with."""

    cfg: Config
    budget: Budget
    p: programs.Programs
    init: Any
    train_step: Any
    eval_step: Any
    state: Any
    loader: Any
    ckpt: Checkpointer
    monitor: Monitor
    start_step: int
    own: bool  # resumed from the run's own checkpoints (else fresh, or from train.resume_from)
    poison: dict[int, float]
    health: dict[str, int] = dataclasses.field(default_factory=dict)  # the bad-step counts, as of the last check


def _train(cfg: Config, run_dir: Path, record: records.RunRecord, is_main: bool, on_compiled: Any) -> None:
    t0 = time.time()
    validate(cfg, n_devices=jax.device_count())
    record.update(**budget(cfg).record())  # in the record even if the data or the programs fail below
    resume_source = preflight.resume_source(cfg.train, run_dir)
    ds = _open_data(cfg)
    s = _open_session(cfg, run_dir, record, ds, resume_source, on_compiled)
    b = s.budget
    writers = _open_writers(cfg, run_dir, b, s, is_main)
    log.info(
        f"model {cfg.model.name}: {b.params:,} params ({b.params_nonembed:,} non-embedding), {b.steps} steps x "
        f"{b.batch_tokens} tokens = {b.tokens:,} tokens, warmup {b.warmup}, lr {cfg.optim.lr:.3g}, devices "
        f"{jax.device_count()} ({record['device']})"
    )
    log.info("unigram entropy of the train split: %.4f nats/token (the baseline to beat)", ds.unigram_entropy_nats)
    last: dict[str, Any] = _last_rows(run_dir / "metrics.jsonl") if s.own and is_main else {}
    val = [
        jax.make_array_from_process_local_data(s.p.batch_sharding, _local_rows(batch))
        for batch in data_lib.val_batches(
            ds, seq_len=b.seq_len, batch=cfg.train.batch_size, n_batches=cfg.train.eval_batches
        )
    ]
    by_source = None
    if len(ds.source_names) > 1:  # validation loss per source, from the same windows
        rows = data_lib.val_batch_sources(
            ds, seq_len=b.seq_len, batch=cfg.train.batch_size, n_batches=cfg.train.eval_batches
        )
        by_source = (rows, ds.source_names, ds.source_bytes_per_token_val())
    peak = cfg.train.device_peak_flops or flops.device_peak_flops(
        jax.devices()[0].device_kind, cfg.model.compute_dtype, jax.device_count()
    )
    metrics_hook = MetricsHook(
        batch_tokens=b.batch_tokens,
        params_nonembed=b.params_nonembed,
        flops_per_token=b.flops_per_token,
        peak=peak,
        writers=writers,
        last=last,
        start_step=s.start_step,
        evaluation=lambda params: evaluate(s.eval_step, params, val, ds.bytes_per_token_val, by_source),
    )
    s.health = s.monitor.counts(jax.device_get(guard_metrics(s.state.guard)))
    try:
        _steps(s, metrics_hook, record, t0)
    finally:
        record.update(**s.health)  # the bad-step counts also when preempted or stopped
        _close_quietly(s.ckpt, writers)
    _finish(s, record, last, t0, ds.unigram_entropy_nats)


def _open_session(
    cfg: Config, run_dir: Path, record: records.RunRecord, ds: Any, resume_source: Path | None, on_compiled: Any
) -> Session:
    """The programs compiled, the loader, the checkpointer and the state (fresh or restored)."""
    train = cfg.train
    p = programs.build(cfg)
    b = p.budget
    record.update(**p.record())
    compile_started = time.perf_counter()  # timed apart from the rest of start-up
    p, (init, train_step, eval_step) = programs.compile_fitted(p)  # auto microbatches: XLA's figure confirms
    record.update(compile_seconds=round(time.perf_counter() - compile_started, 3), **p.record())
    if on_compiled is not None:
        on_compiled()
    loader = data_lib.train_loader(
        ds,
        seq_len=b.seq_len,
        global_batch=train.batch_size,
        seed=train.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        total_tokens=b.tokens,
    )
    ckpt = Checkpointer(run_dir / "checkpoints", every_minutes=train.checkpoint_minutes, keep=train.keep_checkpoints)
    monitor = Monitor(train.nan_policy, train.max_bad_steps, train.max_rollbacks, lambda s: _describe_batch(loader, s))
    state = init(jax.random.key(train.seed))
    start_step, state, own = restore_state(ckpt, p.target, state, loader, monitor, train, resume_source, b.steps)
    poison = {s: _POISON[train.debug_poison_kind] for s in train.debug_poison_steps}
    return Session(cfg, b, p, init, train_step, eval_step, state, loader, ckpt, monitor, start_step, own, poison)


def _steps(s: Session, metrics_hook: MetricsHook, record: records.RunRecord, t0: float) -> None:
    """The step loop."""
    train, steps = s.cfg.train, s.budget.steps
    schedule = Schedule(train, steps, s.ckpt)
    meta = {"run_name": train.run_name, "experiment": train.experiment, "git_sha": record.get("git_sha")}
    checkpoint = CheckpointHook(s.ckpt, s.loader, s.monitor, train.nan_policy, meta, steps)
    with SignalFlag() as stop:
        for step in range(s.start_step + 1, steps + 1):
            if step == s.start_step + 1:
                record.update(startup_seconds=round(time.time() - t0 - record["compile_seconds"], 3))
            batch = jax.make_array_from_process_local_data(s.p.batch_sharding, next(s.loader))
            if s.poison:
                s.state, metrics = s.train_step(s.state, batch, np.float32(s.poison.get(step, 1.0)))
            else:
                s.state, metrics = s.train_step(s.state, batch)
            if step == s.start_step + 1:
                jax.block_until_ready(metrics)
                metrics_hook.open_window(step)
            metrics_hook.writers.progress.update(step)
            if train.debug_step_delay:
                time.sleep(train.debug_step_delay)
            due = schedule.at(step, bool(stop.raised))
            if not due.any:
                continue
            m = jax.device_get(metrics)  # a few scalars; the host syncs here only
            verdict = s.monitor.check(step, m) if due.acting else Verdict(clean=s.monitor.peek(m))
            s.health = s.monitor.counts(m)
            if verdict.stop_message:
                raise BadStepsError(verdict.stop_message)
            if verdict.rollback:
                fresh = lambda: s.init(jax.random.key(train.seed))  # noqa: E731
                s.state = rollback(s.state, step, int(m["guard_skipped"]), s.ckpt, s.p.target, s.monitor, fresh)
                s.health = s.monitor.counts(m)
            if due.log or due.eval:
                metrics_hook(step, m, s.health, s.state.params, due.eval)
            if due.save:
                checkpoint(step, s.state, due, verdict)
            if stop.raised:
                log.warning(
                    "stopped by %s after step %d; checkpoint saved, rerun the same command to resume",
                    signal.Signals(stop.raised).name,
                    step,
                )
                raise Preempted()


def _finish(s: Session, record: records.RunRecord, last: dict[str, Any], t0: float, baseline: float) -> None:
    health = s.health
    if s.ckpt.save_seconds:
        log.info(
            "checkpoints: %d saves, the training loop blocked %.3f s per save (mean)",
            len(s.ckpt.save_seconds),
            float(np.mean(s.ckpt.save_seconds)),
        )
    record.update(
        final_train_loss=last.get("loss"),
        final_val_loss=last.get("val_loss"),
        val_bpb=last.get("val_bpb"),
        **_by_source(last),
        tokens_per_second=last.get("tokens_per_second"),
        mfu=last.get("mfu"),
        wall_seconds=round(time.time() - t0, 3),
        **health,
    )
    log.info(
        "done: val loss %.4f nats/token (unigram baseline %.4f), %.4f bits/byte, %.0f tokens/s, %.1f s",
        last.get("val_loss", float("nan")),
        baseline,
        last.get("val_bpb", float("nan")),
        last.get("tokens_per_second") or 0.0,
        time.time() - t0,
    )
    if health["skipped_steps"]:
        log.warning(
            "bad steps: %(nonfinite_steps)d non-finite, %(spike_steps)d spikes, %(skipped_steps)d updates "
            "skipped, %(rollbacks)d rollbacks",
            health,
        )


def _by_source(last: dict[str, Any]) -> dict[str, Any]:
    """results.json's val_loss_by_source and val_bpb_by_source, from the last evaluation's per-source rows."""
    out = {}
    for metric in ("val_loss", "val_bpb"):
        rows = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith(f"{metric}/")}
        if rows:
            out[f"{metric}_by_source"] = rows
    return out


def _open_data(cfg: Config) -> data_lib.Dataset:
    try:
        ds = data_lib.prepare(cfg.data)
    except OSError as e:
        raise ConfigError(
            f"could not prepare the data under data.cache_dir={cfg.data.cache_dir} ({e.strerror or e}); make that "
            "folder writable or point data.cache_dir somewhere writable."
        ) from e
    if ds.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {ds.vocab_size} tokens but model.vocab_size={cfg.model.vocab_size}; "
            f"set data.vocab_size <= model.vocab_size."
        )
    return ds


def _open_writers(cfg: Config, run_dir: Path, b: Budget, s: Session, is_main: bool) -> RunWriters:
    tb = jsonl = None
    if is_main:
        fresh_tb = not ((run_dir / "tb").is_dir() and any((run_dir / "tb").iterdir()))
        tb = TensorBoardWriter(run_dir / "tb")
        if fresh_tb:  # the HParams dashboard's row for this run, once
            tb.hparams(records.run_hparams(cfg, b), trial_id=cfg.train.run_name)
        tb.restart_at(s.start_step + 1)  # TensorBoard forgets what an interrupted session logged past the restore
        jsonl = JsonlWriter(run_dir / "metrics.jsonl", resume_step=s.start_step if s.own else None)
    progress = Progress(
        total=b.steps, initial=s.start_step, enabled=cfg.train.progress and is_main, desc=cfg.train.run_name
    )
    return RunWriters(jsonl, tb, progress)


def _describe_batch(loader: Any, step: int) -> str:
    windows = loader.window_indices(step - 1, all_processes=True)
    shown = ", ".join(str(int(w)) for w in windows[:3])
    more = f" and {len(windows) - 3} more" if len(windows) > 3 else ""
    return f"batch {step} of the train stream, token windows {shown}{more}"


def _last_rows(path: Path) -> dict[str, Any]:
    """What the kept metrics.jsonl rows say last (for the records of a run resumed at its end)."""
    last: dict[str, Any] = {}
    if path.exists():
        for row in read_jsonl(path):
            last.update({k: v for k, v in row.items() if v is not None})
    return last


def _close_quietly(ckpt: Checkpointer, writers: RunWriters) -> None:
    pending_error = sys.exc_info()[1] is not None
    writers.close()
    try:
        ckpt.close()
    except Exception:
        if not pending_error:
            raise
        log.exception("closing the checkpointer failed")


def _local_rows(global_batch: np.ndarray) -> np.ndarray:
    """This process's rows of a batch that every process computed in full (the validation slice)."""
    n = jax.process_count()
    per = global_batch.shape[0] // n
    return global_batch[jax.process_index() * per : (jax.process_index() + 1) * per]
