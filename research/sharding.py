"""Mesh construction and the logical-axis -> mesh-axis rule table.

Parameters and activations carry *logical* axis names (embed, vocab, heads, mlp, ...); this file
is the one place that decides which mesh axes they are split over.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from research.config import ConfigError, MeshConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv": None,  # head_dim
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
}

# Per thread (a sweep compiles its next member in a background thread while the current one trains).
_active: ContextVar[tuple[Mesh | None, Mapping[str, Any]]] = ContextVar("mesh_and_rules", default=(None, DEFAULT_RULES))


def mesh_shape(mesh_cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    """Resolve -1 and check the product against the device count (one clear sentence if not)."""
    sizes = {"data": mesh_cfg.data, "fsdp": mesh_cfg.fsdp, "tensor": mesh_cfg.tensor}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1; fix the others to sizes.")
    if free:
        if n_devices % fixed:
            raise ConfigError(
                f"mesh sizes {sizes} cannot fill {n_devices} devices ({n_devices} is not divisible by {fixed}); "
                "change the fixed mesh axes."
            )
        sizes[free[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise ConfigError(
            f"mesh data x fsdp x tensor = {fixed} but there are {n_devices} devices; "
            "make the product match or set one axis to -1."
        )
    return sizes


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def make_rules(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    rules = dict(DEFAULT_RULES)
    for name, axes in (overrides or {}).items():
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
        bad = [a for a in (axes if isinstance(axes, tuple) else (axes,)) if a is not None and a not in MESH_AXES]
        if bad:
            raise ConfigError(
                f"mesh.rules.{name}={axes!r} names unknown mesh axes {bad}; use data, fsdp, tensor or null."
            )
        rules[name] = axes
    return rules


def logical_to_spec(names: Sequence[str | None] | None, rules: Mapping[str, Any] | None = None) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec; a mesh axis is used at most once per array."""
    rules = rules if rules is not None else _active.get()[1]
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    out = []
    for name in names:
        axes = rules.get(name) if name is not None else None
        axes_t = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
        axes_t = tuple(a for a in axes_t if a not in used)
        used.update(axes_t)
        out.append(None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t))
    return PartitionSpec(*out)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide a dimension (e.g. vocab 50257 over tensor=2): replicate it."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        axes_t = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
        size = math.prod(mesh.shape[a] for a in axes_t)
        out.append(axes if size and dim % size == 0 else None)
    return PartitionSpec(*out)


def variable_spec(var: Any, mesh: Mesh, rules: Mapping[str, Any]) -> PartitionSpec:
    names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
    return fit_spec_to_shape(logical_to_spec(names, rules), var.shape, mesh)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Mapping[str, Any]) -> Any:
    """NamedSharding for every variable of an (abstract) nnx.State, from its logical names."""
    from flax import nnx

    def to_sharding(var: Any) -> Any:
        if isinstance(var, nnx.Variable):
            return var.replace(NamedSharding(mesh, variable_spec(var, mesh, rules)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(to_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Mapping[str, Any]) -> Iterator[None]:
    """Make `constrain` use this mesh and rule table (and set JAX's mesh context)."""
    with jax.set_mesh(mesh), constraining((mesh, dict(rules))):
        yield


def active() -> tuple[Mesh | None, Mapping[str, Any]]:
    """The (mesh, rules) that `constrain` uses here; (None, defaults) outside `activate`."""
    return _active.get()


@contextlib.contextmanager
def constraining(mesh_and_rules: tuple[Mesh | None, Mapping[str, Any]]) -> Iterator[None]:
    """Only `constrain`'s (mesh, rules), not JAX's mesh context: usable inside a traced function, where a jit
    made under `activate` but traced later (at its first call) re-enters the context it was made in."""
    token = _active.set(mesh_and_rules)
    try:
        yield
    finally:
        _active.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op outside `activate`."""
    mesh, rules = _active.get()
    if mesh is None or mesh.size == 1:
        return x
    spec = fit_spec_to_shape(logical_to_spec(names, rules), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch", "length"), rules))


def logical_shards(sizes: Mapping[str, int], rules: Mapping[str, Any] | None, name: str) -> int:
    """How many ways mesh axes of these sizes split the logical axis `name` under `rules`."""
    axes = logical_to_spec((name,), rules)[0]
    axes_t = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
    return math.prod(sizes.get(a, 1) for a in axes_t)


def data_shards(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> int:
    return logical_shards(mesh.shape, rules, "batch")


def shards_of(name: str) -> int:
    """How many ways the active mesh splits the logical axis `name` (1 outside `activate`)."""
    mesh, rules = _active.get()
    return 1 if mesh is None else logical_shards(mesh.shape, rules, name)


def describe(mesh: Mesh) -> str:
    """'data=2 x fsdp=2 x tensor=2 over 8 cpu devices' (for logs and benchmark output)."""
    axes = " x ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)
    return f"{axes} over {mesh.size} {mesh.devices.flat[0].platform} devices"


# ---------------------------------------------------------------------------------------------
# Attention implementation: the fast path when it can run, else xla with one loud warning.

_warned_attention: set[tuple[str, str]] = set()


def resolve_attention_impl(model_cfg: Any, platform: str | None = None) -> str:
    """The attention implementation that actually runs for this model: 'xla' or 'cudnn'.

    model.attention_impl=cudnn (cuDNN flash attention) needs a GPU and bfloat16/float16 compute,
    and a head size cuDNN supports; it is also test-compiled once for the model's shapes. When
    it cannot run, this logs one warning per (request, reason) and returns 'xla', so a run never
    silently trains on the slower kernel: the warning names the cause, and the loop records the
    path that ran as results.json's attention_impl.
    """
    requested = str(model_cfg.attention_impl)
    if requested != "cudnn":
        return "xla"
    platform = platform or jax.default_backend()
    reason = _cudnn_unavailable(
        platform, str(model_cfg.compute_dtype), int(model_cfg.n_head),
        int(model_cfg.d_head or model_cfg.d_model // model_cfg.n_head), int(model_cfg.seq_len),
        int(model_cfg.local_window) if model_cfg.attention == "alternating" else 0,
    )  # fmt: skip
    if reason is None:
        return "cudnn"
    if (requested, reason) not in _warned_attention:
        _warned_attention.add((requested, reason))
        log.warning(
            "SLOW ATTENTION: model.attention_impl=cudnn was asked for but %s; falling back to the xla attention "
            "kernel (slower, more memory). Set model.attention_impl=xla to silence this.", reason,
        )  # fmt: skip
    return "xla"


@functools.cache
def _cudnn_unavailable(platform: str, compute_dtype: str, n_head: int, d_head: int, seq_len: int,
                       window: int) -> str | None:  # fmt: skip
    """None when cuDNN flash attention compiles for these shapes, else the reason it cannot."""
    if platform not in ("gpu", "cuda"):
        return f"the backend is {platform}, not a CUDA GPU"
    if compute_dtype not in ("bfloat16", "float16"):
        return f"cuDNN flash attention needs model.compute_dtype=bfloat16 (got {compute_dtype})"
    if d_head % 8 or d_head > 256:
        return f"cuDNN flash attention needs a head size that is a multiple of 8 and at most 256 (got {d_head})"
    import jax.numpy as jnp

    T = min(seq_len, 256)
    qkv = jax.ShapeDtypeStruct((1, T, n_head, d_head), jnp.dtype(compute_dtype))
    local = (window - 1, 0) if window > 0 else None

    def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local, implementation="cudnn")
        return out.astype(jnp.float32).sum()

    try:  # forward and backward, as training runs them
        jax.jit(jax.grad(attend, argnums=(0, 1, 2))).lower(qkv, qkv, qkv).compile()
    except Exception as e:  # noqa: BLE001 - any failure means: not available here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"cuDNN attention did not compile for these shapes ({type(e).__name__}: {first})"
    return None
