"""Train state, born sharded: abstract init -> shardings from the rule table -> jit(init, out_shardings)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research import sharding
from research.config import ModelConfig
from research.train.guards import GuardState, init_guard


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # uint32 key data (raw, so it checkpoints as a plain array)
    guard: GuardState  # bad-step counters and loss statistics (research/train/guards.py)


def make_model_factory(model_cfg: ModelConfig) -> Callable[[jax.Array], nnx.Module]:
    from research.model import GPT

    def make(key: jax.Array) -> nnx.Module:
        return GPT(model_cfg, rngs=nnx.Rngs(params=key))

    return make


def graphdef_of(model_cfg: ModelConfig) -> nnx.GraphDef:
    """The model's structure, without allocating its parameters."""
    make = make_model_factory(model_cfg)
    abstract = nnx.eval_shape(lambda: make(jax.random.key(0)))
    graphdef, _ = nnx.split(abstract, nnx.Param)
    return graphdef


def _init_fn(model_cfg: ModelConfig, tx: optax.GradientTransformation) -> Callable[[jax.Array], TrainState]:
    make = make_model_factory(model_cfg)

    def init(seed_key: jax.Array) -> TrainState:
        init_key, run_key = jax.random.split(seed_key)
        model = make(init_key)
        params = nnx.state(model, nnx.Param)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
            rng=jax.random.key_data(run_key), guard=init_guard(),
        )  # fmt: skip

    return init


def state_shardings(abstract_state: TrainState, mesh: Mesh, rules: Mapping[str, Any]) -> TrainState:
    """NamedSharding per leaf: parameters and their optimizer moments by logical names, the rest replicated."""

    def to_sharding(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            return x.replace(NamedSharding(mesh, sharding.variable_spec(x, mesh, rules)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(to_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return jax.eval_shape(_init_fn(model_cfg, tx), jax.random.key(seed))


def init_state(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int, mesh: Mesh, rules: Mapping[str, Any]
) -> tuple[TrainState, TrainState]:
    """Returns (state, shardings); every array is created directly in its final sharding."""
    init = _init_fn(model_cfg, tx)
    abstract = jax.eval_shape(init, jax.random.key(seed))
    shardings = state_shardings(abstract, mesh, rules)
    with sharding.activate(mesh, rules):
        state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    return state, shardings
