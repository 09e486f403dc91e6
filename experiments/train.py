"""Train one model, or every member of a sweep.

    python experiments/train.py model=nano_m train.tokens_per_param=20          # one run
    python experiments/train.py -m +experiment=cpu_sweep                          # a sweep (make sweep)
    python experiments/train.py -m +experiment=gpt3_ladder hydra/launcher=slurm   # a sweep on SLURM

A run directory whose results.json says completed with the same config is final: the run is skipped.
An interrupted run resumes from its checkpoints (the train loop does that), a failed one is rerun. In a
sweep (-m) a member that fails is recorded (results.json: status failed, error) and the sweep goes on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from research import sweep
from research.config import ConfigError, register_configs, to_config
from research.train import records

ROOT = Path(__file__).resolve().parents[1]
register_configs()
log = logging.getLogger("train")


def train_member(cfg: DictConfig, run_dir: Path) -> float | None:
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else e
        raise ConfigError(str(cause).splitlines()[0]) from e
    assert isinstance(resolved, dict)

    prior = records.read_results(run_dir)
    if prior and prior.get("status") == "completed" and isinstance(prior.get("config"), dict):
        diffs = sweep.completed_differences(prior["config"], resolved)
        if not diffs:
            log.info("%s completed earlier with this config (val loss %.4f); skipped", run_dir,
                     prior.get("final_val_loss") or float("nan"))  # fmt: skip
            sweep.note_outcome(run_dir, "skipped")
            return prior.get("final_val_loss")
        shown = ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise ConfigError(
            f"{run_dir} holds a completed run with a different config ({shown}); a completed run is final, so "
            "delete that directory to retrain it or give this one another train.run_name."
        )

    typed = to_config(cfg)
    from research.train.programs import configure_compilation_cache

    configure_compilation_cache()
    import jax

    from research import distributed
    from research.metrics import TensorBoardWriter
    from research.train.loop import run

    distributed.maybe_initialize()  # several processes (SLURM, JAX_* variables): before any other JAX use
    tb_dir = run_dir / "tb"
    if jax.process_index() == 0 and not (tb_dir.is_dir() and any(tb_dir.iterdir())):  # process 0 writes records
        try:
            writer = TensorBoardWriter(tb_dir)
            writer.hparams(sweep.member_hparams(typed), trial_id=typed.train.run_name)
            writer.close()
        except (ConfigError, ValueError, ZeroDivisionError):
            pass  # the loop reports a bad config in one sentence
    results = run(typed, run_dir, resolved)
    sweep.note_outcome(run_dir, str(results.get("status")), results.get("error"))
    if results.get("status") == "running" and HydraConfig.get().mode == RunMode.MULTIRUN:
        # Stopped by a signal with a checkpoint saved: stop the whole sweep, not just this member.
        raise SystemExit(f"sweep stopped by a signal during {run_dir.name}; rerun the same command to resume")
    return results.get("final_val_loss")


def run_member(cfg: DictConfig, run_dir: Path, multirun: bool) -> float | None:
    """One run or sweep member. In a sweep a failure is recorded and returned, not raised: Hydra's basic
    sweeper re-raises a job's exception after the batch, which would end the sweep."""
    try:
        return train_member(cfg, run_dir)
    except ConfigError as e:
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
    sweep.record_failure(run_dir, cfg, error)  # the loop writes its own record; this covers earlier failures
    sweep.note_outcome(run_dir, "failed", error)
    return None


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    return run_member(cfg, Path(hc.runtime.output_dir), multirun=hc.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    from research.train.preflight import cli_or_exit

    cli_or_exit()  # a misspelt setting or config name: one sentence, before Hydra composes
    main()
