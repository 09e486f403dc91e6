"""Model configs and models for tests: the conf/model/ files composed through Hydra, tiny configs, and tiny
models filled with random values (no init ops to compile, which keeps the CPU tests fast)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from research.config.hydra import register_configs
from research.config.schema import ModelConfig
from research.model.gpt import GPT, abstract_model
from research.ops import select

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "conf" / "model"
ALL_MODELS = sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))
TOKENS = np.random.default_rng(1).integers(0, 61, size=(2, 16))


def model_config(name: str) -> ModelConfig:
    """Compose conf/model/<name>.yaml through Hydra, so the YAML files themselves are tested."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_object(compose(config_name=f"model/{name}").model)


def tiny(**overrides) -> ModelConfig:
    base = dict(name="tiny", n_layer=2, d_model=32, n_head=4, vocab_size=61, seq_len=16, local_window=4)
    return ModelConfig(**{**base, **overrides})


def params_of(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def randomized(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A model with random values everywhere (biases and LayerNorm too, so the reference test sees
    them), filled from numpy into a shape-only model: no init ops to compile, which keeps the CPU
    tests fast. Same seed and same structure -> same weights. The kernels are those a run on this platform
    selects (research/ops/select.py)."""
    model = abstract_model(cfg, kernels=select.select(cfg, jax.default_backend()))
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    pure = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model
