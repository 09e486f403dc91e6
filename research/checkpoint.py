"""Orbax CheckpointManager wrapper: train state + data-loader position + run metadata.

- Atomic: orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it once every item
  is complete; a crash mid-save leaves only such a folder, which is never listed as a step and is
  deleted when the next manager starts.
- Asynchronous: save() returns once the arrays are on the host; the files are written in the
  background and the outcome is confirmed at the next save, wait or close (a failure raises
  CheckpointError there).
- Keep the last n: pruning happens here, and only after the newest save is confirmed on disk, so
  a failed save (disk full, permission denied) never costs an older checkpoint. The newest
  checkpoint saved at a clean check ("verified", the rollback target) is kept as well.
- Verified restore: the metadata carries a fingerprint of every array (modular sums of its bits,
  computed on device at save). A step that fails to restore, or whose arrays do not reproduce
  the fingerprint, is reported with its step number, moved to `checkpoints.damaged/`, and the
  previous step is tried.
- Safe: only JSON and orbax's array format are read (no pickles).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from research.errors import CheckpointError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".orbax-checkpoint-tmp"
_DISK_REASONS = ("No space left", "Permission denied", "Read-only file system", "Disk quota", "File too large")


class CheckpointDamaged(RuntimeError):
    pass


class Checkpointer:
    def __init__(
        self,
        directory: Path,
        *,
        every_minutes: float = float("inf"),
        keep: int = 2,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.every_seconds = every_minutes * 60.0
        self.keep = keep
        self.read_only = read_only
        self._last_save_time = time.monotonic()
        self._pending: int | None = None
        self.save_seconds: list[float] = []  # blocking part of each save (device -> host, launch)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # pruned here, after a save is confirmed
            enable_async_checkpointing=not read_only,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,
        )
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise CheckpointError(
                f"cannot use {self.directory} for checkpoints ({e.strerror or e}); fix its permissions or choose "
                "another hydra.run.dir."
            ) from e

    # -- when ---------------------------------------------------------------------------------
    def time_due(self) -> bool:
        return time.monotonic() - self._last_save_time >= self.every_seconds

    # -- save ---------------------------------------------------------------------------------
    def save(
        self, step: int, state: Any, loader_state: dict, meta: dict, *, verified: bool = True, wait: bool = False
    ) -> None:
        """Start writing `step`; the previous save is confirmed (or its failure raised) first."""
        self._settle()
        started = time.monotonic()
        meta = {**meta, "step": int(step), "verified": bool(verified), "fingerprint": fingerprint(state)}
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    loader=ocp.args.JsonSave(loader_state),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - whatever orbax/tensorstore raise, report the cause
            self._forget_failed(step)
            raise self._error(step, e) from e
        now = time.monotonic()
        self.save_seconds.append(now - started)
        self._last_save_time = now
        self._pending = step
        if wait:
            self._settle()

    def _settle(self) -> None:
        """Wait for the save in flight; confirm it landed, then prune old steps."""
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._forget_failed(step)
            raise self._error(step, e) from e
        if not (self.directory / str(step)).is_dir():  # orbax logs some failures instead of raising
            self._forget_failed(step)
            raise self._error(step, RuntimeError("the step folder was never completed"))
        self._prune()

    def _prune(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep :])
        verified = [s for s in steps if self.meta_of(s).get("verified")]
        if verified:
            keep.add(verified[-1])
        for s in steps:
            if s not in keep:
                try:
                    self.manager.delete(s)
                except Exception as e:  # noqa: BLE001 - a leftover old step is harmless
                    log.warning("could not delete the old checkpoint at step %d (%s)", s, e)

    def _forget_failed(self, step: int) -> None:
        """Remove what a failed save left (its temporary folder) and forget the step."""
        for tmp in self.directory.glob(f"{step}{TMP_SUFFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.manager.reload()
        except Exception:  # noqa: BLE001
            pass

    def _error(self, step: int, e: BaseException) -> CheckpointError:
        reason = _reason(e)
        others = ", ".join(str(s) for s in self.steps() if s != step) or "none"
        return CheckpointError(
            f"could not write the checkpoint of step {step} to {self.directory} ({reason}); the checkpoints already "
            f"there (steps: {others}) are untouched, so free disk space or fix permissions there and rerun the same "
            "command to resume."
        )

    # -- read ---------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def meta_of(self, step: int) -> dict[str, Any]:
        """A step's metadata read straight from its JSON file ({} when unreadable)."""
        try:
            return json.loads((self.directory / str(step) / "meta" / "metadata").read_text())
        except (OSError, ValueError):
            return {}

    def restore(self, step: int, target_state: Any) -> tuple[Any, dict, dict]:
        """(state, loader_state, meta) of `step`; raises if the step is unreadable or fails its fingerprint."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target_state),
                loader=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        meta = dict(restored.meta)
        expected = meta.get("fingerprint")
        if expected is not None and fingerprint(restored.state) != sorted(expected):
            raise CheckpointDamaged("its arrays do not reproduce the fingerprint saved with them")
        return restored.state, dict(restored.loader), meta

    def restore_latest(
        self, target_state: Any, *, verified_only: bool = False, below: int | None = None
    ) -> tuple[int, Any, dict, dict] | None:
        """Newest restorable checkpoint as (step, state, loader_state, meta); None when there is none.

        A damaged step is reported (naming it), moved aside unless read-only, and skipped."""
        if not self.read_only:
            self._settle()
        for step in reversed(self.steps()):
            if below is not None and step >= below:
                continue
            if verified_only and not self.meta_of(step).get("verified"):
                continue
            try:
                state, loader_state, meta = self.restore(step, target_state)
            except Exception as e:  # noqa: BLE001 - any damage means: fall back to an older step
                moved = self._quarantine(step)
                log.warning(
                    "the checkpoint at step %d in %s is damaged (%s)%s; using the previous one",
                    step,
                    self.directory,
                    _first_line(e),
                    f", moved to {moved}" if moved else "",
                )
                continue
            return step, state, loader_state, meta
        return None

    def _quarantine(self, step: int) -> Path | None:
        """Move a damaged step out of the manager's sight (so the run can save that step again)."""
        if self.read_only or jax.process_index() != 0:
            return None
        src = self.directory / str(step)
        dst = self.directory.parent / f"{self.directory.name}.damaged" / f"{step}-{int(time.time())}"
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dst)
            self.manager.reload()
            return dst
        except OSError:
            return None

    def wait(self) -> None:
        self._settle()

    def close(self) -> None:
        try:
            self._settle()
        finally:
            self.manager.close()


def restore_target(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings the restored arrays must land in."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


# ---------------------------------------------------------------------------------------------
# Fingerprint: per array, two sums of its bits mod 2**32: plain, and weighted by the row (the
# position along all but the last axis; the element for 1-d arrays), so moved blocks show too.
# Integer sums are exact in any order: the value does not depend on sharding or device. One pass
# over the state, at save and restore only.


def _bits_u32(x: jax.Array) -> jax.Array:
    if x.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if x.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    return x.astype(jnp.uint32)


def _leaf_sums(x: jax.Array) -> jax.Array:
    bits = _bits_u32(x)
    rows = jnp.sum(bits, axis=-1, dtype=jnp.uint32).reshape(-1) if x.ndim >= 2 else bits.reshape(-1)
    weight = jax.lax.iota(jnp.uint32, rows.shape[0]) * jnp.uint32(0x9E3779B1) + jnp.uint32(1)
    return jnp.stack([jnp.sum(rows, dtype=jnp.uint32), jnp.sum(rows * weight, dtype=jnp.uint32)])


@jax.jit
def _fingerprint_leaves(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([_leaf_sums(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def _leaf_sums_host(x: np.ndarray) -> list[int]:
    """_leaf_sums in numpy (uint32 arithmetic wraps the same way): no compile for small states."""
    if x.dtype.itemsize == 4:
        bits = x.view(np.uint32)
    elif x.dtype.itemsize == 2:
        bits = x.view(np.uint16).astype(np.uint32)
    else:
        bits = x.astype(np.uint32)
    rows = bits.sum(axis=-1, dtype=np.uint32).reshape(-1) if x.ndim >= 2 else bits.reshape(-1)
    weight = np.arange(rows.shape[0], dtype=np.uint32) * np.uint32(0x9E3779B1) + np.uint32(1)
    return [int(rows.sum(dtype=np.uint32)), int((rows * weight).sum(dtype=np.uint32))]


HOST_FINGERPRINT_BYTES = 64 << 20  # below this a state is summed on the host: no compile for small states


def fingerprint(tree: Any) -> list[list[int]]:
    """Sorted per-array sums: independent of the container types the tree is restored into."""
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    if sum(x.nbytes for x in leaves) <= HOST_FINGERPRINT_BYTES and all(x.is_fully_addressable for x in leaves):
        return sorted(_leaf_sums_host(np.asarray(x)) for x in jax.device_get(leaves))
    return sorted(np.asarray(jax.device_get(_fingerprint_leaves(leaves))).astype(int).tolist())


def _reason(e: BaseException) -> str:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        text = str(seen)
        for r in _DISK_REASONS:
            if r.lower() in text.lower():
                return r
        seen = seen.__cause__ or seen.__context__
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0].split(" See full TensorStore details")[0][:200] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
