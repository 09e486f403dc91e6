"""The Hydra callback of a sweep (conf/config.yaml: hydra.callbacks.sweep): a progress line per member as it
starts and ends, summary.csv when the multirun ends, and (local sweeps on the CPU) the next member's
programs compiled while the current one trains (research/cpu/compile_ahead.py).

A member's outcome comes from the task function's return value (experiments/train.py returns the record,
status 'skipped' when it was final already) and from its results.json.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import jax
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from research.budget import budget
from research.config.hydra import to_config
from research.cpu import compile_ahead
from research.parallel import distributed
from research.sweep.report import write_summary
from research.train import records

log = logging.getLogger("sweep")


def member_overrides(config: DictConfig) -> list[list[str]] | None:
    """Each job's task overrides, in job order, as the basic sweeper makes them (None: not knowable)."""
    try:
        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        overrides = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
        return [list(job) for batch in batches for job in batch]
    except Exception:
        return None


def _is_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


def _compiles_ahead(config: DictConfig) -> bool:
    distributed.maybe_initialize()  # before any other JAX use (a no-op for one process)
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    return compile_ahead.runs_here(launcher, jax.process_count(), jax.default_backend())


class SweepCallback(Callback):
    """Progress lines per member ("[member 3/7] nano_14k-tpp20 ..."), summary.csv at the end of a multirun,
    and (compile_ahead, local sweeps) the next member's programs compiled while the current one trains."""

    def __init__(self, summary: bool = True, compile_ahead: bool = True) -> None:
        self.summary = summary
        self.compile_ahead = compile_ahead
        self.ahead: compile_ahead.CompileAhead | None = None
        self.jobs: list[list[str]] = []
        self.config_name = "config"
        self.sweep_dir = Path(".")
        self._ahead_stats: dict[int, tuple[float, float | None]] = {}
        self.total: int | None = None
        self.started = time.time()
        self._job_started: dict[int, float] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.jobs = member_overrides(config) or []
        self.total = len(self.jobs) if self.jobs else None
        self.config_name = str(OmegaConf.select(config, "hydra.job.config_name") or "config")
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.started = time.time()
        if self.compile_ahead and _compiles_ahead(config):
            self.ahead = compile_ahead.CompileAhead()
        n = "?" if self.total is None else self.total
        print(
            f"[sweep] {OmegaConf.select(config, 'train.experiment')}: {n} members -> {config.hydra.sweep.dir}",
            flush=True,
        )

    def _label(self, config: DictConfig) -> str:
        num = int(OmegaConf.select(config, "hydra.job.num") or 0) + 1
        return f"[member {num}/{self.total or '?'}]"

    def _left(self, config: DictConfig) -> str:
        if self.total is None:
            return ""
        left = self.total - int(OmegaConf.select(config, "hydra.job.num") or 0) - 1
        return f"; {left} left" if left else "; the last member"

    def _start_compile_ahead(self, num: int) -> None:
        """Compose job `num`'s config here (Hydra is not thread-safe) and compile it in a thread."""
        if self.ahead is None or not 0 <= num < len(self.jobs):
            return
        try:
            cfg = to_config(compose(self.config_name, overrides=self.jobs[num]))
        except Exception as e:  # the member itself reports a bad config
            log.debug("compile ahead of job %d skipped: %s", num, e)
            return
        if (records.read_results(self.sweep_dir / cfg.train.run_name) or {}).get("status") == "completed":
            return  # will be skipped
        self.ahead.start(num, cfg)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        num = int(config.hydra.job.num)
        if self.ahead is not None:
            self._ahead_stats[num] = self.ahead.wait(num)  # never two compiles at once
            self._start_compile_ahead(num + 1)
        self._job_started[num] = time.time()
        if (records.read_results(Path(config.hydra.runtime.output_dir)) or {}).get("status") == "completed":
            return  # most likely skipped; on_job_end says
        try:
            cfg = OmegaConf.to_object(_without_hydra(config))
            b = budget(cfg)
            what = (
                f"{cfg.model.name}: N={b.params_nonembed:,} non-embedding params, {b.tokens:,} tokens in "
                f"{b.steps:,} steps of {cfg.train.batch_size}x{b.seq_len}, lr {cfg.optim.lr:.3g}, "
                f"warmup {b.warmup}"
            )
        except Exception as e:  # the member itself will report a bad config
            what = f"(config does not resolve: {str(e).splitlines()[0]})"
        log.info("%s %s  %s", self._label(config), config.train.run_name if _resolves(config) else "?", what)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        outcome = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        outcome = outcome if isinstance(outcome, dict) else {}
        if self.ahead is not None:
            self.ahead.release()
        rec = records.read_results(run_dir) or {}
        num = int(config.hydra.job.num)
        waited, took_ahead = self._ahead_stats.pop(num, (0.0, None))
        status = outcome.get("status") or rec.get("status") or "unknown"
        if took_ahead is not None and status == "completed":
            records.add_compile_ahead(run_dir, waited, took_ahead)
        took = time.time() - self._job_started.pop(num, time.time())
        if status == "completed":
            tps = rec.get("tokens_per_second")
            detail = f"val loss {rec.get('final_val_loss', float('nan')):.4f}, {(tps or 0):,.0f} tokens/s, {took:.0f} s"
        elif status == "skipped":
            detail = f"completed earlier (val loss {rec.get('final_val_loss') or float('nan'):.4f}); nothing to do"
        else:
            detail = str(outcome.get("error") or rec.get("error") or "see train.log").rstrip(".")
        shown = status if status in ("completed", "skipped") else status.upper()
        log.info("%s %s %s: %s%s", self._label(config), run_dir.name, shown, detail, self._left(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.ahead is not None:
            self.ahead.wait(-1)
        if not self.summary:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            path, rows = write_summary(sweep_dir)
        except Exception as e:  # the sweep's runs are intact; only the table failed
            print(f"[sweep] could not write summary.csv: {e}", flush=True)
            return
        n_done = sum(r.get("status") == "completed" for r in rows)
        bad = [r for r in rows if r.get("status") != "completed"]
        print(
            f"[sweep] done in {time.time() - self.started:.0f} s: {len(rows)} members, {n_done} completed"
            f"{f', {len(bad)} not' if bad else ''}; wrote {path}",
            flush=True,
        )
        for r in bad:
            print(f"[sweep]   {r.get('run_dir')}: {str(r.get('status')).upper()}: {r.get('error')}", flush=True)


def _without_hydra(config: DictConfig) -> DictConfig:
    """The task's config, as Hydra hands it to the task function (typed, without the hydra node)."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _resolves(config: DictConfig) -> bool:
    try:
        _ = config.train.run_name
        return True
    except Exception:
        return False
