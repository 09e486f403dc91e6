"""Train state, born sharded: abstract init -> shardings from the rule table -> jit(init, out_shardings)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.config.schema import ModelConfig
from research.model.gpt import GPT
from research.ops.select import Kernels
from research.parallel.rules import variable_spec
from research.train.guards import GuardState, init_guard


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # uint32 key data (raw, so it checkpoints as a plain array)
    guard: GuardState  # bad-step counters and loss statistics (research/train/guards.py)


def graphdef_of(model_cfg: ModelConfig, kernels: Kernels) -> nnx.GraphDef:
    """The model's structure, without allocating its parameters."""
    abstract = nnx.eval_shape(lambda: GPT(model_cfg, kernels=kernels, rngs=nnx.Rngs(params=jax.random.key(0))))
    graphdef, _ = nnx.split(abstract, nnx.Param)
    return graphdef


def init_fn(
    model_cfg: ModelConfig, kernels: Kernels, tx: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """seed key -> the initial TrainState (parameters, optimizer moments, RNG, guard statistics)."""

    def init(seed_key: jax.Array) -> TrainState:
        init_key, run_key = jax.random.split(seed_key)
        params = nnx.state(GPT(model_cfg, kernels=kernels, rngs=nnx.Rngs(params=init_key)), nnx.Param)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(run_key),
            guard=init_guard(),
        )

    return init


def state_shardings(abstract_state: TrainState, mesh: Mesh, rules: Mapping[str, Any]) -> TrainState:
    """NamedSharding per leaf: parameters and their optimizer moments by logical names, the rest replicated."""

    def to_sharding(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            return x.replace(NamedSharding(mesh, variable_spec(x, mesh, rules)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(to_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
