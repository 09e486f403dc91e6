"""Multi-host: two processes on localhost (jax.distributed, gloo CPU collectives) train like one.

Each process runs the real entry point with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID, holds one CPU device and loads only its half of the global batch; the mesh
(data=2) spans both. The losses must equal a one-process run with the same global batch, and
the run directory must hold one set of records (process 0's) and a checkpoint both wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, tiny_overrides, train_in_process

from research.errors import ConfigError
from research.metrics import read_jsonl
from research.parallel import distributed

STEPS = 5


def overrides(corpus, cache, *extra: str) -> list[str]:
    return tiny_overrides(
        corpus,
        cache,
        f"train.steps={STEPS}",
        "train.log_every=1",
        f"train.eval_every={STEPS}",
        f"train.checkpoint_every={STEPS}",
        *extra,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, corpus_dir):
    cache = tmp_path / "data"
    ref = train_in_process(tmp_path / "one", overrides(corpus_dir, cache))  # also prepares the data once
    ref_losses = [r["loss"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")]

    run_dir = tmp_path / "two"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "SLURM_", "OMPI_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "train.py"),
        *overrides(corpus_dir, cache, "mesh=dp"),
        f"hydra.run.dir={run_dir}",
    ]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one writer: no duplicated rows
    np.testing.assert_allclose([r["loss"] for r in rows], ref_losses, rtol=1e-5)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["n_devices"] == 2
    assert results["steps"] == STEPS and results["batch_tokens"] == ref["batch_tokens"]
    assert results["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-5)
    events = [f.name for f in (run_dir / "tb").glob("events.out.tfevents.*")]
    assert events and all(f".{procs[0].pid}." in name for name in events), events  # process 0's only
    assert (run_dir / "checkpoints" / str(STEPS)).is_dir()  # written collectively
    log = (run_dir / "train.log").read_text()
    assert log.count("done: val loss") == 1  # process 1 logs nothing to the file
    assert "distributed: process 0 of 2" in log


def test_launch_settings():
    assert distributed.launch_settings({}) is None
    assert distributed.launch_settings({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distributed.launch_settings({"SLURM_NTASKS": "4"}) == {"cluster_detection_method": "slurm"}
    assert distributed.launch_settings({"OMPI_COMM_WORLD_SIZE": "2"}) == {"cluster_detection_method": "ompi"}
    explicit = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert distributed.launch_settings(explicit) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 2,
        "process_id": 1,
    }
    assert distributed.launch_settings({"JAX_NUM_PROCESSES": "1"}) is None
    with pytest.raises(ConfigError, match="JAX_COORDINATOR_ADDRESS"):
        distributed.launch_settings({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
    with pytest.raises(ConfigError, match="must lie in 0..1"):
        distributed.launch_settings({**explicit, "JAX_PROCESS_ID": "2"})
    assert distributed.maybe_initialize({}) is False  # one process: nothing to do
