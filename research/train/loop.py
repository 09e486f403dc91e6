"""One training run: config -> data -> sharded state -> steps, eval, records, checkpoints."""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import OmegaConf

from research import data as data_lib
from research import flops, sharding
from research.checkpoint import Checkpointer, restore_target
from research.config import Config, ConfigError, batch_tokens, total_steps, train_seq_len, validate, warmup_steps
from research.metrics import JsonlWriter, TensorBoardWriter
from research.train import records
from research.train.optimizer import build_optimizer, lr_schedule
from research.train.progress import Progress
from research.train.state import graphdef_of, init_state
from research.train.step import make_eval_step, make_train_step

log = logging.getLogger("train")
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO


class Preempted(Exception):
    """A signal asked the run to stop; a checkpoint was written."""


class _SignalFlag:
    """First SIGTERM/SIGINT: stop at the next step boundary with a checkpoint; a second: exit now."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised is not None:
            raise SystemExit(128 + signum)
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
    """Train one run in run_dir; always leaves results.json (status completed, failed or running)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = records.empty_results()
    results.update(
        status="running", experiment=cfg.train.experiment, run_name=cfg.train.run_name, model=cfg.model.name,
        config=resolved_config if resolved_config is not None else OmegaConf.to_container(OmegaConf.structured(cfg)),
        git_sha=records.git_sha(), device=jax.devices()[0].device_kind, n_devices=jax.device_count(),
    )  # fmt: skip
    is_main = jax.process_index() == 0
    if is_main:
        records.write_json_atomic(run_dir / "results.json", results)
    try:
        _train(cfg, run_dir, results, is_main)
        results["status"] = "completed"
    except Preempted:
        results["status"] = "running"
        results["error"] = "preempted: stopped by a signal after saving a checkpoint; rerun to resume"
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
    validate(cfg, n_devices=jax.device_count())
    counts = flops.param_counts(cfg.model)
    seq_len, b_tokens = train_seq_len(cfg), batch_tokens(cfg)
    steps = total_steps(cfg, counts["params_nonembed"])
    if steps < 1:
        raise ConfigError(
            f"the token budget ({cfg.train.tokens_per_param} x {counts['params_nonembed']} non-embedding params) is "
            f"smaller than one step of {b_tokens} tokens; raise train.tokens_per_param or shrink the batch."
        )
    fpt = flops.flops_per_token(cfg.model, seq_len)
    results.update(
        params=counts["params"], params_nonembed=counts["params_nonembed"], params_embed=counts["params_embed"],
        steps=steps, batch_tokens=b_tokens, seq_len=seq_len, tokens=steps * b_tokens,
        flops=6 * counts["params_nonembed"] * steps * b_tokens, flops_model=fpt["flops_per_token"] * steps * b_tokens,
    )  # fmt: skip

    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.make_rules(cfg.mesh.rules)
    shards = sharding.data_shards(mesh, rules)
    if cfg.train.batch_size % (shards * cfg.train.microbatches):
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by the {shards} data shards x "
            f"{cfg.train.microbatches} microbatches; pick a multiple of {shards * cfg.train.microbatches}."
        )
    ds = data_lib.prepare(cfg.data)
    if ds.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {ds.vocab_size} tokens but model.vocab_size={cfg.model.vocab_size}; "
            f"set data.vocab_size <= model.vocab_size."
        )

    warmup = warmup_steps(cfg, steps)
    schedule = lr_schedule(cfg.optim, steps, warmup)
    tx = build_optimizer(cfg.optim, schedule)
    state, shardings = init_state(cfg.model, tx, cfg.train.seed, mesh, rules)
    graphdef = graphdef_of(cfg.model)
    batch_sh = sharding.batch_sharding(mesh, rules)
    with sharding.activate(mesh, rules):
        train_step = make_train_step(graphdef, tx, schedule, shardings, batch_sh, cfg.train.microbatches)
        eval_step = make_eval_step(graphdef, shardings.params, batch_sh)

    loader = data_lib.train_loader(
        ds, seq_len=seq_len, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
        process_index=jax.process_index(), process_count=jax.process_count(), total_tokens=steps * b_tokens,
    )  # fmt: skip
    val = [
        jax.make_array_from_process_local_data(batch_sh, _local_rows(b))
        for b in data_lib.val_batches(ds, seq_len=seq_len, batch=cfg.train.batch_size, n_batches=cfg.train.eval_batches)
    ]

    ckpt = Checkpointer(
        run_dir / "checkpoints", every_steps=cfg.train.checkpoint_every,
        every_minutes=cfg.train.checkpoint_minutes, keep=cfg.train.keep_checkpoints,
    )  # fmt: skip
    start_step = 0
    restored = ckpt.restore_latest(restore_target(jax.eval_shape(lambda: state), shardings))
    if restored is not None:
        start_step, state, loader_state, _ = restored
        loader.set_state(loader_state)
        log.info("resumed from the checkpoint at step %d", start_step)

    peak = cfg.train.device_peak_flops or flops.device_peak_flops(
        jax.devices()[0].device_kind, cfg.model.compute_dtype, jax.device_count()
    )
    tb = TensorBoardWriter(run_dir / "tb") if is_main else None
    jsonl = JsonlWriter(run_dir / "metrics.jsonl", resume_step=start_step if restored else None) if is_main else None
    if tb and restored:
        tb.restart_at(start_step)
    log.info(
        "model %s: %s params (%s non-embedding), %d steps x %d tokens = %s tokens, warmup %d, lr %.3g, devices %d (%s)",
        cfg.model.name, f"{counts['params']:,}", f"{counts['params_nonembed']:,}", steps, b_tokens,
        f"{steps * b_tokens:,}", warmup, cfg.optim.lr, jax.device_count(), results["device"],
    )  # fmt: skip
    log.info("unigram entropy of the train split: %.4f nats/token (the baseline to beat)", ds.unigram_entropy_nats)

    progress = Progress(total=steps, initial=start_step, enabled=cfg.train.progress and is_main, desc=cfg.train.run_name)
    window_start, window_step = None, start_step
    last: dict[str, Any] = {}
    with _SignalFlag() as stop:
        for step in range(start_step + 1, steps + 1):
            batch = jax.make_array_from_process_local_data(batch_sh, next(loader))
            state, metrics = train_step(state, batch)
            if window_start is None:  # exclude compilation from the throughput figure
                jax.block_until_ready(metrics)
                window_start, window_step = time.perf_counter(), step
            progress.update(step)
            is_log = step % cfg.train.log_every == 0 or step == steps
            is_eval = step % cfg.train.eval_every == 0 or step == steps
            if is_log or is_eval:
                row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                tps = (step - window_step) * b_tokens / (now - window_start) if step > window_step else None
                if tps is not None:
                    window_start, window_step = now, step
                    last["tokens_per_second"] = tps
                tps = last.get("tokens_per_second")
                row = {
                    "step": step, "tokens": step * b_tokens, "flops": 6 * counts["params_nonembed"] * step * b_tokens,
                    **row, "tokens_per_second": tps,
                    "mfu": flops.mfu(tps, fpt["flops_per_token"], peak) if tps and peak else None,
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
            if ckpt.due(step) or step == steps or stop.raised:
                ckpt.save(step, state, loader.get_state(), {"step": step, "run_name": cfg.train.run_name},
                          wait=step == steps or bool(stop.raised))
            if stop.raised:
                progress.close()
                ckpt.close()
                log.warning("stopped by %s after step %d; checkpoint saved, rerun the same command to resume",
                            signal.Signals(stop.raised).name, step)
                raise Preempted()
    progress.close()
    ckpt.close()
    if tb:
        tb.close()
    if jsonl:
        jsonl.close()
    results.update(
        final_train_loss=last.get("loss"), final_val_loss=last.get("val_loss"), val_bpb=last.get("val_bpb"),
        tokens_per_second=last.get("tokens_per_second"), mfu=last.get("mfu"), wall_seconds=round(time.time() - t0, 3),
    )  # fmt: skip
    log.info(
        "done: val loss %.4f nats/token (unigram baseline %.4f), %.4f bits/byte, %.0f tokens/s, %.1f s",
        last.get("val_loss", float("nan")), ds.unigram_entropy_nats, last.get("val_bpb", float("nan")),
        last.get("tokens_per_second") or 0.0, time.time() - t0,
    )  # fmt: skip


def _local_rows(global_batch: np.ndarray) -> np.ndarray:
    """This process's rows of a batch that every process computed in full (the validation slice)."""
    n = jax.process_count()
    per = global_batch.shape[0] // n
    return global_batch[jax.process_index() * per : (jax.process_index() + 1) * per]
