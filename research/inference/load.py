"""Load a run for inference: its config, the parameters of a checkpoint, and its tokenizer.

    run = load_run("runs/default/nano_s-seed0")     # newest checkpoint; step=... for another
    run.model(tokens_BT)                            # a GPT holding the restored parameters
    run.tokenizer().decode(ids)

Only the parameters are read (an orbax partial restore of `state.params`), so neither the
optimizer state nor the training code's state layout matters. The config comes from the run's
results.json (resolved) or, failing that, its .hydra/config.yaml. The tokenizer is the one the
run's data config prepared (research.data caches it by fingerprint; it is rebuilt if missing).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from omegaconf import OmegaConf

from research import data as data_lib
from research.config.schema import DataConfig, ModelConfig
from research.errors import ConfigError
from research.model.gpt import abstract_model
from research.ops import select
from research.sweep.resolvers import register_resolvers


@dataclass
class LoadedRun:
    run_dir: Path
    step: int
    config: dict[str, Any]  # the run's resolved config
    model_cfg: ModelConfig
    model: nnx.Module
    tokenizer_path: Path | None

    def tokenizer(self) -> Any:
        if self.tokenizer_path is None:
            raise ConfigError(f"no tokenizer was found for the run {self.run_dir}; prepare its data first.")
        return data_lib.load_tokenizer(self.tokenizer_path)


def run_config(run_dir: Path | str) -> dict[str, Any]:
    """The run's resolved config: results.json's `config`, else .hydra/config.yaml (resolved)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run={run_dir} is not a directory; give a run directory (e.g. runs/default/nano_s-seed0).")
    results = run_dir / "results.json"
    if results.is_file():
        try:
            config = json.loads(results.read_text()).get("config")
        except ValueError:
            config = None
        if isinstance(config, dict) and "model" in config:
            return config
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        register_resolvers()  # experiment files may use ${sweep.*}
        return OmegaConf.to_container(OmegaConf.load(hydra_cfg), resolve=True)  # type: ignore[return-value]
    raise ConfigError(f"run={run_dir} has neither results.json nor .hydra/config.yaml; point run= at a run directory.")


def _dataclass_from(cls: type, values: dict[str, Any]) -> Any:
    """cls(**values) keeping only the fields cls knows (runs written by older or newer code load too)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def model_config_of(config: dict[str, Any]) -> ModelConfig:
    m = _dataclass_from(ModelConfig, config["model"])
    # Inference needs none of the training-time choices: plain XLA attention runs everywhere.
    return dataclasses.replace(m, attention_impl="xla", remat="none")


def checkpoint_steps(run_dir: Path | str) -> list[int]:
    """Completed checkpoint steps (orbax renames a step's folder into place only when it is complete)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def restore_params(run_dir: Path | str, model_cfg: ModelConfig, step: int | None = None) -> tuple[int, nnx.Module]:
    """(step, model with that checkpoint's parameters), on the default device, with the kernels of its platform."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise ConfigError(f"run={run_dir} has no checkpoints; train it first (checkpoints land in checkpoints/).")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ConfigError(f"step={step} is not among the checkpoints of {run_dir} ({steps}); pick one of those.")
    model = abstract_model(model_cfg, kernels=select.select(model_cfg, jax.default_backend()))
    graphdef, abstract = nnx.split(model, nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)}
    path = (Path(run_dir) / "checkpoints" / str(step) / "state").resolve()
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
            ),
        )
    except (ValueError, KeyError) as e:
        raise ConfigError(
            f"the checkpoint at {path} does not hold parameters of the model in the run's config ({e}); "
            "check that run= points at the run that wrote it."
        ) from e
    return step, nnx.merge(graphdef, restored["params"])


def tokenizer_path_of(config: dict[str, Any]) -> Path | None:
    """The tokenizer file the run trained with (its data prepared again, deterministically, if it is gone)."""
    data = dict(config.get("data") or {})
    if not data:
        return None
    data.setdefault("vocab_size", config["model"]["vocab_size"])
    data_cfg = _dataclass_from(DataConfig, data)
    directory = data_lib.dataset_dir(data_cfg)[0]
    if (directory / "meta.json").is_file():
        return data_lib.Dataset.load(directory).tokenizer_path
    return data_lib.prepare(data_cfg).tokenizer_path


def load_run(run_dir: Path | str, step: int | None = None, *, with_tokenizer: bool = True) -> LoadedRun:
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    model_cfg = model_config_of(config)
    step, model = restore_params(run_dir, model_cfg, step)
    tok = tokenizer_path_of(config) if with_tokenizer else None
    return LoadedRun(run_dir=run_dir, step=step, config=config, model_cfg=model_cfg, model=model, tokenizer_path=tok)
