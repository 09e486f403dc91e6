"""The logical-axis -> mesh-axis rule table, and sharding constraints by logical name.

Parameters and activations carry *logical* axis names (embed, vocab, heads, mlp, ...); this file is
the one place that decides which mesh axes they are split over. `constrain` reads the (mesh, rules)
made current by `activate`, per thread (a sweep compiles its next member in a background thread
while the current one trains), as jax.set_mesh does for the mesh.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.errors import ConfigError
from research.parallel.mesh import MESH_AXES

# logical name -> mesh axis (or tuple of axes, or None = replicated)
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
}

MeshAndRules = tuple[Mesh | None, Mapping[str, Any]]
_active: ContextVar[MeshAndRules] = ContextVar("mesh_and_rules", default=(None, DEFAULT_RULES))


def make_rules(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    rules = dict(DEFAULT_RULES)
    for name, axes in (overrides or {}).items():
        if isinstance(axes, list | tuple):
            axes = tuple(axes)
        bad = [a for a in (axes if isinstance(axes, tuple) else (axes,)) if a is not None and a not in MESH_AXES]
        if bad:
            raise ConfigError(
                f"mesh.rules.{name}={axes!r} names unknown mesh axes {bad}; use data, fsdp, tensor or null."
            )
        rules[name] = axes
    return rules


def _axes(entry: Any) -> tuple[str, ...]:
    return entry if isinstance(entry, tuple) else ((entry,) if entry else ())


def logical_to_spec(names: Sequence[str | None] | None, rules: Mapping[str, Any] | None = None) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec; a mesh axis is used at most once per array."""
    rules = rules if rules is not None else _active.get()[1]
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    out = []
    for name in names:
        axes = tuple(a for a in _axes(rules.get(name) if name is not None else None) if a not in used)
        used.update(axes)
        out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return PartitionSpec(*out)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide a dimension (e.g. vocab 50257 over tensor=2): replicate it."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        size = math.prod(mesh.shape[a] for a in _axes(axes))
        out.append(axes if size and dim % size == 0 else None)
    return PartitionSpec(*out)


def variable_spec(var: Any, mesh: Mesh, rules: Mapping[str, Any]) -> PartitionSpec:
    names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
    return fit_spec_to_shape(logical_to_spec(names, rules), var.shape, mesh)


def logical_shards(sizes: Mapping[str, int], rules: Mapping[str, Any] | None, name: str) -> int:
    """How many ways mesh axes of these sizes split the logical axis `name` under `rules`."""
    return math.prod(sizes.get(a, 1) for a in _axes(logical_to_spec((name,), rules)[0]))


def data_shards(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> int:
    return logical_shards(mesh.shape, rules, "batch")


def batch_sharding(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch", "length"), rules))


# ---------------------------------------------------------------------------------------------
# The current (mesh, rules), for constraints on activations


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Mapping[str, Any]) -> Iterator[None]:
    """Make `constrain` use this mesh and rule table (and set JAX's mesh context)."""
    with jax.set_mesh(mesh), constraining((mesh, dict(rules))):
        yield


def active() -> MeshAndRules:
    """The (mesh, rules) that `constrain` uses here; (None, defaults) outside `activate`."""
    return _active.get()


@contextlib.contextmanager
def constraining(mesh_and_rules: MeshAndRules) -> Iterator[None]:
    """Only `constrain`'s (mesh, rules), not JAX's mesh context: usable inside a traced function."""
    token = _active.set(mesh_and_rules)
    try:
        yield
    finally:
        _active.reset(token)


def keep_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` constrains with the (mesh, rules) current where it was wrapped, wherever it is traced: a jit
    made under `activate` traces at its first call, which may come outside it."""
    made_in = _active.get()

    @functools.wraps(fn)
    def in_context(*args: Any, **kwargs: Any) -> Any:
        with constraining(made_in):
            return fn(*args, **kwargs)

    return in_context


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op outside `activate`."""
    mesh, rules = _active.get()
    if mesh is None or mesh.size == 1:
        return x
    spec = fit_spec_to_shape(logical_to_spec(names, rules), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
