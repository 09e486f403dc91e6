"""Train one model: `python experiments/train.py model=nano_m train.tokens_per_param=20`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from research.config import ConfigError, register_configs, to_config

register_configs()
log = logging.getLogger("train")


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from research.train.loop import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(to_config(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return results.get("final_val_loss")


if __name__ == "__main__":
    main()
