"""Orbax CheckpointManager wrapper: train state + data-loader position + run metadata.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a step that looks finished. On restore, a damaged newest step is reported
and skipped in favour of the one before it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    def __init__(self, directory: Path, *, every_steps: int, every_minutes: float, keep: int) -> None:
        self.directory = directory.resolve()
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60.0
        self._last_save_time = time.monotonic()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True
            ),
        )
        self.save_seconds: list[float] = []

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0 or time.monotonic() - self._last_save_time >= self.every_seconds

    def save(self, step: int, state: Any, loader_state: dict, meta: dict, *, wait: bool = False) -> None:
        started = time.monotonic()
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
            if wait:
                self.manager.wait_until_finished()
        except OSError as e:
            raise CheckpointError(
                f"could not write a checkpoint to {self.directory} ({e.strerror or e}); free disk space or fix "
                "permissions there — the previous checkpoints are untouched."
            ) from e
        self._last_save_time = time.monotonic()
        self.save_seconds.append(self._last_save_time - started)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, target_state: Any) -> tuple[int, Any, dict, dict] | None:
        """Newest restorable checkpoint as (step, state, loader_state, meta); None when there is none."""
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target_state),
                        loader=ocp.args.JsonRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                return step, restored.state, dict(restored.loader), dict(restored.meta)
            except Exception as e:  # noqa: BLE001 - any damage means: fall back to an older step
                log.warning("checkpoint at step %d is damaged (%s: %s); trying the previous one", step,
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_target(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings the restored arrays must land in."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
