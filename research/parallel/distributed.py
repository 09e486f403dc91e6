"""Multi-host start-up: `jax.distributed.initialize()` when this process is one of several.

A run is multi-process when it is launched so:
- explicitly, with the environment variables JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (0..n-1) on every process, e.g. on two hosts
      JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python experiments/train.py ...
      JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 python experiments/train.py ...
- by SLURM (`srun` with SLURM_NTASKS > 1) or Open MPI (OMPI_COMM_WORLD_SIZE > 1): JAX reads the
  coordinator, process count and process id from the launcher's variables itself.
Anything else (including SLURM_NTASKS=1) is one process and nothing is initialized.

Call `maybe_initialize()` before any other JAX use (research/train/loop.py's run does, first).
After it, every process sees the global device list; the mesh spans all of them, each process
loads only its rows of the global batch (research/data, jax.make_array_from_process_local_data),
orbax writes checkpoints collectively (every process calls save), and only process 0 writes
results.json, metrics.jsonl, TensorBoard events and the log file: the other processes keep
warnings and errors on their own stderr.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from research.errors import ConfigError

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# Launchers whose variables jax.distributed.initialize() detects by itself: size variable -> method.
AUTO_DETECTED = {"SLURM_NTASKS": "slurm", "OMPI_COMM_WORLD_SIZE": "ompi"}


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer; set it to a whole number.") from None


def launch_settings(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Keyword arguments for jax.distributed.initialize, or None when this is a single-process run."""
    env = os.environ if env is None else env
    if env.get(ENV_NUM_PROCESSES) or env.get(ENV_PROCESS_ID):
        n = _int(env, ENV_NUM_PROCESSES) if env.get(ENV_NUM_PROCESSES) else None
        if n is not None and n < 1:
            raise ConfigError(f"{ENV_NUM_PROCESSES}={n} must be at least 1.")
        if n == 1:
            return None
        missing = [k for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not env.get(k)]
        if missing:
            raise ConfigError(
                f"a multi-process launch needs {', '.join(missing)} as well; set {ENV_COORDINATOR} (host:port of "
                f"process 0), {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} on every process."
            )
        pid = _int(env, ENV_PROCESS_ID)
        if not 0 <= pid < n:
            raise ConfigError(f"{ENV_PROCESS_ID}={pid} must lie in 0..{n - 1} for {ENV_NUM_PROCESSES}={n}.")
        return {"coordinator_address": env[ENV_COORDINATOR], "num_processes": n, "process_id": pid}
    for size_var, method in AUTO_DETECTED.items():
        if env.get(size_var) and _int(env, size_var) > 1:
            return {"cluster_detection_method": method}
    return None


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
    """Initialize JAX's distributed runtime when launched as several processes; True if it is up.

    Idempotent (a second call, e.g. the next run of an in-process sweep, does nothing)."""
    import jax

    if jax.distributed.is_initialized():
        return True
    settings = launch_settings(env)
    if settings is None:
        return False
    try:
        jax.distributed.initialize(**settings)
    except RuntimeError as e:
        if "before" in str(e).lower():  # JAX was already used in this process
            raise ConfigError(
                "jax.distributed.initialize() must run before any other JAX call; call "
                "research.distributed.maybe_initialize() first thing in the entry point."
            ) from e
        raise
    if jax.process_index() != 0:
        quiet_logging()
    log.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def quiet_logging() -> None:
    """On processes other than 0: no log file (process 0 writes it), warnings and errors to stderr only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
