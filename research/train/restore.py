"""Where a run starts: its own newest checkpoint, else train.resume_from, else step 0."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from research.checkpoint import Checkpointer
from research.config.schema import TrainConfig
from research.errors import ConfigError
from research.train.guards import Monitor

log = logging.getLogger("train")


def restore_state(
    ckpt: Checkpointer,
    target: Any,
    state: Any,
    loader: Any,
    monitor: Monitor,
    train: TrainConfig,
    resume_source: Path | None,
    steps: int,
) -> tuple[int, Any, bool]:
    """(start step, state, own): the state, loader position and bad-step bookkeeping of the newest restorable
    checkpoint (the run's own first; `own` says so), or step 0 with `state` as it is."""
    restored, own = ckpt.restore_latest(target), True
    if restored is None and resume_source is not None:
        own = False
        external = Checkpointer(resume_source, read_only=True)
        restored = external.restore_latest(target)
        external.close()
        if restored is None:
            raise ConfigError(
                f"train.resume_from={train.resume_from} holds no restorable checkpoint ({resume_source}); point it "
                "at another run's checkpoints folder or set it to null."
            )
    if restored is None:
        return 0, state, False
    start_step, state, loader_state, meta = restored
    loader.set_state(loader_state)
    monitor.load(meta.get("health"))
    log.info("resumed from the checkpoint at step %d%s", start_step, "" if own else f" of {resume_source}")
    if start_step > steps:
        raise ConfigError(
            f"the checkpoint at step {start_step} is past this run's {steps} steps; raise the budget "
            "(train.steps / train.tokens) or choose another hydra.run.dir."
        )
    return start_step, state, own
