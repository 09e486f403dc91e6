"""Plan a training run from its config, without building the model or touching a device.

    python experiments/plan.py model=gpt3_175b mesh=fsdp plan.devices=1024      # readable budget
    python experiments/plan.py model=gpt2_small output=json                       # one JSON object on stdout
    python experiments/plan.py model=gpt3_6p7b train=gpu plan.device=A100-40GB plan.mfu=0.5 plan.fit=fits/fit.json

Parameters, FLOPs per token (both conventions), the budget and its training FLOPs, Chinchilla-
optimal tokens, memory per device (weights, compute copies, gradients, optimizer moments,
activations; each remat policy) under the mesh, whether it fits plan.device, and the wall time
at plan.mfu. Pure arithmetic (research/planner.py, research/flops.py), so even 175B is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from research.config.hydra import register_configs, to_config  # noqa: E402
from research.config.validate import validate  # noqa: E402
from research.errors import ConfigError  # noqa: E402
from research.planner import make_plan, render_text  # noqa: E402

# A planner writes nothing: no run directory, no .hydra/ snapshot, no log file.
_QUIET = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none")


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        config = to_config(cfg)
        validate(config)
        plan = make_plan(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg.get("output", "text") == "json":
        print(json.dumps(plan))
    else:
        print(render_text(plan))


if __name__ == "__main__":
    register_configs()
    sys.argv += [o for o in _QUIET if o.split("=")[0] not in " ".join(sys.argv[1:])]
    main()
