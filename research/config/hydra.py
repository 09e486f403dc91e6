"""Hydra's side of the config: the schema registered as structured configs, the ${sweep.*} resolvers,
composing the conf/ tree, and the typed Config out of a composed node.

The config modules that Hydra and OmegaConf touch are this one and research/sweep/resolvers.py; the
schema, derived quantities and validation know nothing of either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from research.config.schema import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from research.errors import ConfigError
from research.sweep.resolvers import register_resolvers

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(group="data", name="base_data", node=DataConfig)
    store.store(group="optim", name="base_optim", node=OptimConfig)
    store.store(group="train", name="base_train", node=TrainConfig)
    store.store(group="mesh", name="base_mesh", node=MeshConfig)
    register_resolvers()


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The conf/ tree composed with these overrides, as the entry points see it (outside @hydra.main)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)


def to_config(cfg: Any) -> Config:
    """Hydra DictConfig -> typed Config; a missing or mistyped value becomes one clear sentence."""
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "a setting"
        raise ConfigError(
            f"{key} is missing or has the wrong type ({type(e).__name__}); set it in conf/ or on the command line."
        ) from e


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The composed config with every interpolation resolved (what results.json records); a resolver's own
    ConfigError surfaces as itself."""
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else e
        raise ConfigError(str(cause).splitlines()[0]) from e
    assert isinstance(out, dict)
    return out
