"""Where per-unit tasks run: in this process, in a pool of worker processes on this machine, or as a job
array through submitit (on SLURM, or submitit's local executor). Tasks are independent and idempotent
(a finished unit is skipped), so any of them may be rerun after a crash or a preempted array task.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from research.errors import ConfigError

EXECUTORS = ("local", "slurm", "submitit_local")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _quiet_worker() -> None:
    # One worker per core: the Rust tokenizer must not start its own thread pool in every worker.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def run_tasks(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    *,
    executor: str = "local",
    workers: int | None = None,
    folder: Path | None = None,
    slurm: dict | None = None,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """fn(job) for every job; results in job order; on_done(i, result) as each finishes."""
    if executor not in EXECUTORS:
        raise ConfigError(f"data.executor={executor!r} is not one of {', '.join(EXECUTORS)}.")
    on_done = on_done or (lambda i, r: None)
    if not jobs:
        return []
    if executor == "local":
        n = min(len(jobs), workers or default_workers())
        return _inline(fn, jobs, on_done) if n <= 1 else _pool(fn, jobs, n, on_done)
    return _submitit(fn, jobs, executor, folder or Path("."), slurm or {}, on_done)


def _inline(fn, jobs, on_done) -> list[Any]:
    out = []
    for i, job in enumerate(jobs):
        out.append(fn(job))
        on_done(i, out[-1])
    return out


def _pool(fn, jobs, n: int, on_done) -> list[Any]:
    # spawn, not fork: the parent may hold JAX's threads (a training run preparing its data).
    ctx = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_quiet_worker) as pool:
        pending = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    results[i] = fut.result()
                    on_done(i, results[i])
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return results


def _submitit(fn, jobs, executor: str, folder: Path, slurm: dict, on_done) -> list[Any]:
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster="local" if executor == "submitit_local" else "slurm")
    params: dict[str, Any] = {"timeout_min": int(slurm.get("timeout_min", 120))}
    if slurm.get("cpus_per_task"):
        params["cpus_per_task"] = int(slurm["cpus_per_task"])
    if slurm.get("mem_gb"):
        params["mem_gb"] = float(slurm["mem_gb"])
    if executor == "slurm":
        if slurm.get("partition"):
            params["slurm_partition"] = slurm["partition"]
        if slurm.get("array_parallelism"):
            params["slurm_array_parallelism"] = int(slurm["array_parallelism"])
        for key, value in (slurm.get("additional") or {}).items():
            params.setdefault("slurm_additional_parameters", {})[key] = value
    ex.update_parameters(name="research.data", **params)
    submitted = ex.map_array(fn, list(jobs))
    results: list[Any] = [None] * len(jobs)
    pending = dict(enumerate(submitted))
    while pending:
        for i, job in list(pending.items()):
            if job.done():
                results[i] = job.result()  # raises the task's own error, with its traceback in the log
                on_done(i, results[i])
                del pending[i]
        if pending:
            time.sleep(0.5)
    return results
