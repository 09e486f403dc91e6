"""The device mesh: axes ('data', 'fsdp', 'tensor') with sizes from the `mesh` config group.

`mesh_shape` is the one check of a mesh against a device count (-1 fills the rest); validation, the
planner and make_mesh all call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

from research.config.schema import MeshConfig
from research.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def check_sizes(mesh_cfg: MeshConfig) -> dict[str, int]:
    """The configured sizes, checked on their own (no device count needed): positive or one -1."""
    sizes = {"data": mesh_cfg.data, "fsdp": mesh_cfg.fsdp, "tensor": mesh_cfg.tensor}
    if sum(1 for v in sizes.values() if v == -1) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1; fix the others to sizes.")
    for axis, v in sizes.items():
        if v == 0 or v < -1:
            raise ConfigError(f"mesh.{axis}={v} must be a positive size or -1 (the rest of the devices).")
    return sizes


def mesh_shape(mesh_cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    """Resolve -1 and check the product against the device count (one clear sentence if not)."""
    sizes = check_sizes(mesh_cfg)
    fixed = math.prod(v for v in sizes.values() if v != -1)
    free = [k for k, v in sizes.items() if v == -1]
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


def describe(mesh: Mesh) -> str:
    """'data=2 x fsdp=2 x tensor=2 over 8 cpu devices' (for logs and benchmark output)."""
    axes = " x ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)
    return f"{axes} over {mesh.size} {mesh.devices.flat[0].platform} devices"
