"""Parameters: creation with logical axis names, initializers, the weight-decay mask, counts.

Every parameter carries logical axis names in its `out_sharding` metadata; research/parallel/rules.py
maps them to mesh axes at jit time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

Init = Callable[..., jax.Array]

# Parameters that get weight decay (matrices); biases, LayerNorm and position tables do not.
DECAYED = frozenset({"wte", "head", "qkv_kernel", "out_kernel", "in_kernel"})
NOT_DECAYED = frozenset({"wpe", "qkv_bias", "out_bias", "in_bias", "scale", "bias"})


def param(key: jax.Array | None, init: Init, shape: Sequence[int], names: Sequence[str | None], dtype) -> nnx.Param:
    """A parameter with logical axis names as metadata only (eager sharding off).

    Modules draw one key from `rngs` and split it, rather than one `rngs.params()` per parameter: each
    draw costs time linear in the traced program under nnx.eval_shape, so per-parameter draws make
    abstract init of a 96-layer model quadratic.
    """
    return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False)


def normal(std: float) -> Init:
    return jax.nn.initializers.normal(stddev=std)


zeros: Init = jax.nn.initializers.zeros
ones: Init = jax.nn.initializers.ones


def count_params(model: nnx.Module) -> int:
    """Parameters as allocated (includes vocab padding rows, if any)."""
    return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def param_name(path: tuple[Any, ...]) -> str:
    """The parameter's own name (wte, qkv_kernel, scale, ...) from its path in the state."""
    for key in reversed(path):
        name = getattr(key, "key", getattr(key, "name", key))
        if isinstance(name, str) and (name in DECAYED or name in NOT_DECAYED):
            return name
    raise KeyError(f"unknown parameter path {path}")


def decay_mask(params: Any) -> Any:
    """Same-structure pytree of bools: True where weight decay applies (matrices only).

    Decided by parameter name, not by ndim, because the attention biases are 2-D/3-D (heads are their
    own axis) and the position table is a matrix that is not decayed (GPT-3).
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: param_name(path) in DECAYED, params)
