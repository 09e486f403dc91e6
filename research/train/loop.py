"""One training run: config -> data -> sharded state -> steps, eval, records, checkpoints."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from research import data as data_lib
from research import distributed, flops, safety, sharding
from research.checkpoint import Checkpointer
from research.config import Config, ConfigError, batch_tokens, check_batch_split, total_steps, train_seq_len, validate
from research.metrics import JsonlWriter, TensorBoardWriter, read_jsonl
from research.train import preflight, programs, records
from research.train.guards import BadStepsError, Monitor, Verdict, guard_metrics
from research.train.progress import Progress

log = logging.getLogger("train")
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO


class Preempted(Exception):
    """A signal asked the run to stop; a checkpoint was written."""


class _SignalFlag:
    """First SIGTERM/SIGINT: stop at the next step boundary with a checkpoint; a second: exit now
    (os._exit: no waiting for a save in flight; its temporary folder is cleaned at the next start,
    the previous checkpoint stands and results.json still says running)."""

    def __init__(self, exit_now: Any = os._exit) -> None:
        self.raised: int | None = None
        self._previous: dict[int, Any] = {}
        self._exit_now = exit_now

    def __enter__(self) -> _SignalFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised is not None:
            print(f"received {signal.Signals(signum).name} again: exiting now; rerun the same command to resume "
                  "from the last checkpoint", file=sys.stderr, flush=True)  # fmt: skip
            self._exit_now(128 + signum)
            return
        self.raised = signum
        log.warning("received %s: saving a checkpoint at the next step boundary (again to exit now)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def evaluate(eval_step: Any, params: Any, val_batches: list[Any], bytes_per_token: float) -> dict[str, float]:
    """Mean validation loss over a fixed slice, its standard error across sequences, and bits per byte."""
    per_seq = np.concatenate([np.asarray(eval_step(params, b)) for b in val_batches])
    loss = float(per_seq.mean())
    stderr = float(per_seq.std(ddof=1) / math.sqrt(len(per_seq))) if len(per_seq) > 1 else float("nan")
    return {"val_loss": loss, "val_loss_stderr": stderr, "val_bpb": data_lib.bits_per_byte(loss, bytes_per_token)}


def run(cfg: Config, run_dir: Path, resolved_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one run in run_dir; always leaves results.json (status completed, failed or running),
    except when the directory itself is unusable or holds a different run (ConfigError, nothing written)."""
    distributed.maybe_initialize()  # several processes (SLURM, JAX_* variables): before any other JAX use
    config = resolved_config if resolved_config is not None else OmegaConf.to_container(OmegaConf.structured(cfg))
    is_main = jax.process_index() == 0
    if is_main:
        preflight.check_run_dir(run_dir, config)
    started = time.time()
    results = records.empty_results()
    results.update(
        status="running", experiment=cfg.train.experiment, run_name=cfg.train.run_name, model=cfg.model.name,
        config=config, git_sha=records.git_sha(), device=jax.devices()[0].device_kind, n_devices=jax.device_count(),
    )  # fmt: skip
    if is_main:
        records.write_json_atomic(run_dir / "results.json", results)
    try:
        _train(cfg, run_dir, results, is_main)
        results["status"] = "completed"
    except Preempted:
        results["status"] = "running"
        results["error"] = "preempted: stopped by a signal after saving a checkpoint; rerun to resume"
    except (SystemExit, KeyboardInterrupt):  # e.g. Ctrl-C before the loop: the last checkpoint stands
        results["status"] = "running"
        results["error"] = "interrupted; rerun to resume from the last checkpoint"
        raise
    except BaseException as e:
        results["status"] = "failed"
        results["error"] = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise
    finally:
        results["wall_seconds"] = results.get("wall_seconds") or round(time.time() - started, 3)
        if is_main:
            records.write_json_atomic(run_dir / "results.json", results)
    return results


def _train(cfg: Config, run_dir: Path, results: dict[str, Any], is_main: bool) -> None:
    t0 = time.time()
    tc = cfg.train
    validate(cfg, n_devices=jax.device_count())
    counts = flops.param_counts(cfg.model)
    seq_len, b_tokens = train_seq_len(cfg), batch_tokens(cfg)
    steps = total_steps(cfg, counts["params_nonembed"])
    if steps < 1:
        raise ConfigError(
            f"the token budget ({tc.tokens_per_param} x {counts['params_nonembed']} non-embedding params) is "
            f"smaller than one step of {b_tokens} tokens; raise train.tokens_per_param or shrink the batch."
        )
    fpt = flops.flops_per_token(cfg.model, seq_len)
    results.update(
        params=counts["params"], params_nonembed=counts["params_nonembed"], params_embed=counts["params_embed"],
        attention_impl=sharding.resolve_attention_impl(cfg.model),
        steps=steps, batch_tokens=b_tokens, seq_len=seq_len, tokens=steps * b_tokens,
        flops=6 * counts["params_nonembed"] * steps * b_tokens, flops_model=fpt["flops_per_token"] * steps * b_tokens,
    )  # fmt: skip
    safety.check_checkpoint_dir(run_dir / "checkpoints", run_dir)
    resume_source = (
        safety.resolve_resume_source(tc.resume_from, run_dir, tc.allow_external_resume) if tc.resume_from else None
    )

    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.make_rules(cfg.mesh.rules)
    check_batch_split(tc, sharding.data_shards(mesh, rules))
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

    poison = {s: _POISON[tc.debug_poison_kind] for s in tc.debug_poison_steps}
    p = programs.build(cfg, poison=bool(poison))
    warmup, target, batch_sh = p.warmup, p.target, p.batch_sharding
    results["streams"] = p.streams
    # Compiled ahead of the loop (and timed apart from the rest of start-up); a sweep may have put them
    # in the persistent cache while the previous member trained.
    compile_started = time.perf_counter()
    with sharding.activate(p.mesh, p.rules):
        init = p.init.lower(jax.random.key(tc.seed)).compile()
    train_step = p.compile_train_step(tc.batch_size, seq_len)
    eval_step = p.compile_eval_step(tc.batch_size, seq_len)
    results["compile_seconds"] = round(time.perf_counter() - compile_started, 3)
    programs.compiled.set()
    state = init(jax.random.key(tc.seed))

    loader = data_lib.train_loader(
        ds, seq_len=seq_len, global_batch=tc.batch_size, seed=tc.seed,
        process_index=jax.process_index(), process_count=jax.process_count(), total_tokens=steps * b_tokens,
    )  # fmt: skip
    val = [
        jax.make_array_from_process_local_data(batch_sh, _local_rows(b))
        for b in data_lib.val_batches(ds, seq_len=seq_len, batch=tc.batch_size, n_batches=tc.eval_batches)
    ]

    ckpt = Checkpointer(
        run_dir / "checkpoints", every_steps=tc.checkpoint_every, every_minutes=tc.checkpoint_minutes,
        keep=tc.keep_checkpoints,
    )  # fmt: skip
    monitor = Monitor(tc.nan_policy, tc.max_bad_steps, tc.max_rollbacks, lambda s: _describe_batch(loader, s))
    start_step, own = 0, False
    restored = ckpt.restore_latest(target)
    if restored is not None:
        own = True
    elif resume_source is not None:
        external = Checkpointer(resume_source, read_only=True)
        restored = external.restore_latest(target)
        external.close()
        if restored is None:
            raise ConfigError(
                f"train.resume_from={tc.resume_from} holds no restorable checkpoint ({resume_source}); point it at "
                "another run's checkpoints folder or set it to null."
            )
    if restored is not None:
        start_step, state, loader_state, meta = restored
        loader.set_state(loader_state)
        monitor.load(meta.get("health"))
        log.info("resumed from the checkpoint at step %d%s", start_step, "" if own else f" of {resume_source}")
        if start_step > steps:
            raise ConfigError(
                f"the checkpoint at step {start_step} is past this run's {steps} steps; raise the budget "
                "(train.steps / train.tokens) or choose another hydra.run.dir."
            )

    peak = tc.device_peak_flops or flops.device_peak_flops(
        jax.devices()[0].device_kind, cfg.model.compute_dtype, jax.device_count()
    )
    tb = TensorBoardWriter(run_dir / "tb") if is_main else None
    jsonl = JsonlWriter(run_dir / "metrics.jsonl", resume_step=start_step if own else None) if is_main else None
    if tb:  # TensorBoard forgets whatever an interrupted session logged past the restored step
        tb.restart_at(start_step + 1)
    log.info(
        "model %s: %s params (%s non-embedding), %d steps x %d tokens = %s tokens, warmup %d, lr %.3g, devices %d (%s)",
        cfg.model.name, f"{counts['params']:,}", f"{counts['params_nonembed']:,}", steps, b_tokens,
        f"{steps * b_tokens:,}", warmup, cfg.optim.lr, jax.device_count(), results["device"],
    )  # fmt: skip
    log.info("unigram entropy of the train split: %.4f nats/token (the baseline to beat)", ds.unigram_entropy_nats)

    progress = Progress(total=steps, initial=start_step, enabled=tc.progress and is_main, desc=tc.run_name)
    window_start, window_step = None, start_step
    last: dict[str, Any] = _last_rows(run_dir / "metrics.jsonl") if own and is_main else {}
    health = monitor.counts(jax.device_get(guard_metrics(state.guard)))
    meta_base = {"run_name": tc.run_name, "experiment": tc.experiment, "git_sha": results.get("git_sha")}
    try:
        with _SignalFlag() as stop:
            for step in range(start_step + 1, steps + 1):
                if window_start is None:
                    results["startup_seconds"] = round(time.time() - t0 - results["compile_seconds"], 3)
                batch = jax.make_array_from_process_local_data(batch_sh, next(loader))
                if poison:
                    state, metrics = train_step(state, batch, np.float32(poison.get(step, 1.0)))
                else:
                    state, metrics = train_step(state, batch)
                if window_start is None:  # the throughput window opens after the first step (its warm-up)
                    jax.block_until_ready(metrics)
                    window_start, window_step = time.perf_counter(), step
                progress.update(step)
                if tc.debug_step_delay:
                    time.sleep(tc.debug_step_delay)
                is_log = step % tc.log_every == 0 or step == steps
                is_eval = step % tc.eval_every == 0 or step == steps
                is_ckpt = step % tc.checkpoint_every == 0 or step == steps
                acting = is_log or is_eval or is_ckpt  # deterministic steps: the only ones that act on bad steps
                timed = not is_ckpt and _time_due(ckpt, is_log)
                if not (acting or timed or stop.raised):
                    continue
                m = jax.device_get(metrics)  # a few scalars; the host syncs here only
                verdict = monitor.check(step, m) if acting else Verdict(clean=monitor.peek(m))
                health = monitor.counts(m)
                if verdict.stop_message:
                    raise BadStepsError(verdict.stop_message)
                if verdict.rollback:
                    state = _rollback(state, step, int(m["guard_skipped"]), ckpt, target, monitor,
                                      lambda: init(jax.random.key(tc.seed)))  # fmt: skip
                    health = monitor.counts(m)
                if is_log or is_eval:
                    now = time.perf_counter()
                    tps = (step - window_step) * b_tokens / (now - window_start) if step > window_step else None
                    if tps is not None:
                        window_start, window_step = now, step
                        last["tokens_per_second"] = tps
                    tps = last.get("tokens_per_second")
                    row = {
                        "step": step, "tokens": step * b_tokens, "flops": 6 * counts["params_nonembed"] * step * b_tokens,
                        **{k: float(m[k]) for k in ("loss", "lr", "grad_norm")}, "tokens_per_second": tps,
                        "mfu": flops.mfu(tps, fpt["flops_per_token"], peak) if tps and peak else None, **health,
                    }  # fmt: skip
                    if is_eval:
                        row.update(evaluate(eval_step, state.params, val, ds.bytes_per_token_val))
                    last.update(row)
                    if jsonl:
                        jsonl.write(row)
                    if tb:
                        tb.scalars(step, row)
                        tb.flush()
                    progress.show(row)
                if is_ckpt or timed or stop.raised:
                    meta = {**meta_base, "health": monitor.state(), "wall_time": time.time()}
                    # a rollback may return only to a state saved at a deterministic, clean check
                    verified = acting and (tc.nan_policy != "rollback" or verdict.clean or verdict.rollback)
                    ckpt.save(step, state, loader.get_state(), meta, verified=verified,
                              wait=step == steps or bool(stop.raised))  # fmt: skip
                if stop.raised:
                    log.warning("stopped by %s after step %d; checkpoint saved, rerun the same command to resume",
                                signal.Signals(stop.raised).name, step)  # fmt: skip
                    raise Preempted()
    finally:
        results.update(health)  # the bad-step counts also when preempted or stopped
        progress.close()
        _close_quietly(ckpt, tb, jsonl)
    if ckpt.save_seconds:
        log.info("checkpoints: %d saves, the training loop blocked %.3f s per save (mean)",
                 len(ckpt.save_seconds), float(np.mean(ckpt.save_seconds)))  # fmt: skip
    results.update(
        final_train_loss=last.get("loss"), final_val_loss=last.get("val_loss"), val_bpb=last.get("val_bpb"),
        tokens_per_second=last.get("tokens_per_second"), mfu=last.get("mfu"), wall_seconds=round(time.time() - t0, 3),
        **health,
    )  # fmt: skip
    log.info(
        "done: val loss %.4f nats/token (unigram baseline %.4f), %.4f bits/byte, %.0f tokens/s, %.1f s",
        last.get("val_loss", float("nan")), ds.unigram_entropy_nats, last.get("val_bpb", float("nan")),
        last.get("tokens_per_second") or 0.0, time.time() - t0,
    )  # fmt: skip
    if health["skipped_steps"]:
        log.warning("bad steps: %(nonfinite_steps)d non-finite, %(spike_steps)d spikes, %(skipped_steps)d updates "
                    "skipped, %(rollbacks)d rollbacks", health)  # fmt: skip


_POISON = {"nan": float("nan"), "inf": float("inf"), "spike": 100.0}


def _time_due(ckpt: Checkpointer, is_log: bool) -> bool:
    """Time-based save? Every step on one host; on several, at log steps and as process 0 decides."""
    if jax.process_count() == 1:
        return ckpt.time_due()
    if not is_log:
        return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(ckpt.time_due())))


def _rollback(state: Any, step: int, skipped_now: int, ckpt: Checkpointer, target: Any, monitor: Monitor,
              fresh_state: Any) -> Any:  # fmt: skip
    """Weights, optimizer state and RNG from the newest verified checkpoint (or the initial state),
    with the loss statistics that belong to those weights; the step counter, the bad-step counters
    and the loader stay where they are."""
    step_arr, guard = state.step, state.guard
    for x in jax.tree.leaves((state.params, state.opt_state, state.rng)):  # free before restoring
        x.delete()
    restored = ckpt.restore_latest(target, verified_only=True)
    to_step, new = (0, fresh_state()) if restored is None else restored[:2]
    monitor.rolled_back_to(step, to_step, int(jax.device_get(new.guard.skipped)), skipped_now)
    log.warning("rolled back to the weights of step %d; the batches of steps %d..%d are skipped",
                to_step, to_step + 1, step)  # fmt: skip
    guard = guard.replace(loss_mean=new.guard.loss_mean, loss_var=new.guard.loss_var, n_seen=new.guard.n_seen,
                          streak=jnp.zeros_like(guard.streak))  # fmt: skip
    return new.replace(step=step_arr, guard=guard)


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


def _close_quietly(ckpt: Checkpointer, *writers: Any) -> None:
    pending_error = sys.exc_info()[1] is not None
    for w in writers:
        if w is not None:
            w.close()
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
