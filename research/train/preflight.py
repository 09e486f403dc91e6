"""Checks of the run directory before anything is written or compiled: it is writable, it does not hold a
different run we would overwrite or resume, and the checkpoints it would restore lie where they may.

Each failure is one sentence naming the setting and the fix (ConfigError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from research import safety
from research.config.schema import TrainConfig
from research.errors import ConfigError
from research.train import records


def check_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """The run directory is writable, and does not hold a different run we would overwrite or resume."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"the run directory {run_dir} cannot be written ({e.strerror or e}); choose a writable hydra.run.dir "
            "(or fix the permissions there)."
        ) from e
    records.refuse_other_run(run_dir, config)


def resume_source(train: TrainConfig, run_dir: Path) -> Path | None:
    """Where restores may read: the run's own checkpoints folder must stay inside the run directory, and
    train.resume_from (when set) names a readable checkpoints folder; returns that folder."""
    safety.check_checkpoint_dir(run_dir / "checkpoints", run_dir)
    if not train.resume_from:
        return None
    return safety.resolve_resume_source(train.resume_from, run_dir, train.allow_external_resume)
