"""research/checkpoint.py: damaged steps reported and skipped, the last n kept, a full disk that costs no checkpoint, fingerprints."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT
from helpers import checkpoint_steps, flip_byte, largest_file

from research.checkpoint import Checkpointer

TOY = {"w": jnp.arange(20_000, dtype=jnp.float32), "b": jnp.ones((3,), jnp.bfloat16), "n": jnp.int32(7)}


TOY_TARGET = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), TOY)


def _toy_checkpoints(directory: Path, steps=(1, 2), keep: int = 2) -> Checkpointer:
    ckpt = Checkpointer(directory, keep=keep)
    for s in steps:
        ckpt.save(s, jax.tree.map(lambda x, s=s: x + s, TOY), {"position": s}, {"note": "toy"})
    ckpt.wait()
    return ckpt


DAMAGE = {
    "flipped_byte": lambda d: flip_byte(largest_file(d / "state")),
    "truncated_data": lambda d: (p := largest_file(d / "state")).write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied_data": lambda d: largest_file(d / "state").write_bytes(b""),
    "lost_manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "garbled_metadata": lambda d: (d / "meta" / "metadata").write_text("{not json"),
    "lost_loader_state": lambda d: (d / "loader" / "metadata").unlink(),
    "lost_state": lambda d: shutil.rmtree(d / "state"),
}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tensorstore's abandoned reads
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_step_is_reported_and_skipped(tmp_path, damage, caplog):
    _toy_checkpoints(tmp_path / "checkpoints").close()
    DAMAGE[damage](tmp_path / "checkpoints" / "2")
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    with caplog.at_level(logging.WARNING):
        step, state, loader_state, _ = ckpt.restore_latest(TOY_TARGET)
    ckpt.close()
    assert step == 1 and loader_state == {"position": 1} and float(state["w"][0]) == 1.0
    assert "the checkpoint at step 2" in caplog.text and "damaged" in caplog.text


def test_keeps_the_last_n(tmp_path):
    ckpt = _toy_checkpoints(tmp_path / "checkpoints", steps=(1, 2, 3, 4, 5), keep=2)
    ckpt.close()
    assert checkpoint_steps(tmp_path) == [4, 5]


DISK_FULL_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
import jax, jax.numpy as jnp
from research.checkpoint import Checkpointer, CheckpointError
directory = Path(sys.argv[1])
toy = {"w": jnp.arange(20_000, dtype=jnp.float32), "n": jnp.int32(7)}
ckpt = Checkpointer(directory, keep=2)
for s in (1, 2):
    ckpt.save(s, jax.tree.map(lambda x: x + s, toy), {"position": s}, {})
ckpt.wait()
limit = resource.getrlimit(resource.RLIMIT_FSIZE)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limit[1]))  # every file write past 4 KiB fails (EFBIG)
try:
    ckpt.save(3, jax.tree.map(lambda x: x + 3, toy), {"position": 3}, {}, wait=True)
    message = None
except CheckpointError as e:
    message = str(e)
resource.setrlimit(resource.RLIMIT_FSIZE, limit)
target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), toy)
step, state, loader_state, _ = ckpt.restore_latest(target)
ckpt.close()
print(json.dumps({"message": message, "restored": step, "w0": float(state["w"][0]), "loader": loader_state}))
"""


def test_disk_full_while_saving_keeps_previous_checkpoints(tmp_path):
    """A real write failure in orbax's background writer (a file-size limit makes the data write
    fail with EFBIG; in a subprocess so the limit touches nothing else): one sentence, and the
    earlier checkpoints stay intact and restorable."""
    out = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path / "checkpoints")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    message = result["message"]
    assert message and "could not write the checkpoint of step 3" in message and "File too large" in message
    assert "(steps: 1, 2) are untouched" in message and message.count("\n") == 0
    assert checkpoint_steps(tmp_path) == [1, 2] and not list((tmp_path / "checkpoints").glob("*tmp*"))
    assert (result["restored"], result["w0"], result["loader"]) == (2, 2.0, {"position": 2})


def test_fingerprint_on_the_host_matches_the_compiled_sums(monkeypatch):
    """Small states are summed in numpy, large or sharded ones by a jitted pass: the same numbers."""
    from research import checkpoint

    k = jax.random.key(3)
    tree = {
        "f32": jax.random.normal(k, (5, 7, 3)),
        "bf16": jax.random.normal(k, (9, 4), jnp.bfloat16),
        "i32": jnp.arange(11, dtype=jnp.int32) - 5,
        "u32": jax.random.key_data(k),
        "scalar": jnp.float32(-2.5),
        "flag": jnp.array([True, False, True]),
    }
    host = checkpoint.fingerprint(tree)
    monkeypatch.setattr(checkpoint, "HOST_FINGERPRINT_BYTES", -1)
    assert checkpoint.fingerprint(tree) == host
    swapped = {**tree, "f32": tree["f32"][::-1]}  # the same values, rows moved: the weighted sum changes
    assert checkpoint.fingerprint(swapped) != host
    monkeypatch.setattr(checkpoint, "HOST_FINGERPRINT_BYTES", 1 << 30)
    assert checkpoint.fingerprint(swapped) != host
