"""Train one model, or every member of a sweep.

    python experiments/train.py model=nano_m train.tokens_per_param=20          # one run
    python experiments/train.py -m +experiment=cpu_sweep                          # a sweep (make sweep)
    python experiments/train.py -m +experiment=gpt3_ladder hydra/launcher=slurm   # a sweep on SLURM

A run directory whose results.json says completed with the same config is final: the run is skipped.
An interrupted run resumes from its checkpoints, a failed one is rerun. In a sweep (-m) a member that
fails is recorded (results.json: status failed, error) and the sweep goes on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from research.config.cli import cli_or_exit
from research.config.hydra import register_configs, resolved, to_config
from research.cpu import compile_ahead
from research.errors import UserError
from research.train import records
from research.train.loop import run
from research.train.programs import configure_compilation_cache

register_configs()
log = logging.getLogger("train")


def train_member(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Skip a run that completed with this config, else train (or resume) it; returns its record (status
    'skipped' when it was final already)."""
    config = resolved(cfg)
    prior = records.existing_run(run_dir, config)
    if prior is not None:
        log.info(
            "%s completed earlier with this config (val loss %.4f); skipped",
            run_dir,
            prior.get("final_val_loss") or float("nan"),
        )
        return {**prior, "status": "skipped"}
    typed = to_config(cfg)
    configure_compilation_cache()
    outcome = run(typed, run_dir, config, on_compiled=compile_ahead.mark_compiled)
    if outcome.get("status") == "running" and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        # Stopped by a signal with a checkpoint saved: stop the whole sweep, not just this member.
        raise SystemExit(f"sweep stopped by a signal during {run_dir.name}; rerun the same command to resume")
    return outcome


def run_member(cfg: DictConfig, run_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """One run or sweep member. In a sweep a failure is recorded and None returned, not raised: Hydra's basic
    sweeper re-raises a job's exception after the batch, which would end the sweep."""
    try:
        return train_member(cfg, run_dir)
    except UserError as e:
        log.error("%s", e)
        if not multirun:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        error = str(e)
    except Exception as e:
        if not multirun:
            raise
        log.exception("%s failed", run_dir.name)
        error = f"{type(e).__name__}: {e}"
    records.record_failure(run_dir, _container(cfg), error)  # failures before the loop wrote its record
    return None


def _container(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # the resolution itself failed: keep what was written
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    hc = HydraConfig.get()
    return run_member(cfg, Path(hc.runtime.output_dir), multirun=hc.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    cli_or_exit()  # a misspelt setting or config name: one sentence, before Hydra composes
    main()
