"""research/parallel/: mesh shapes against the device count, the rule table and its overrides, the mesh config files."""

from __future__ import annotations

import pytest
from conftest import compose
from jax.sharding import PartitionSpec as P

from research.config.hydra import to_config
from research.config.schema import MeshConfig
from research.errors import ConfigError
from research.parallel import rules as sharding
from research.parallel.mesh import mesh_shape


def test_mesh_fill_and_impossible_meshes():
    assert mesh_shape(MeshConfig(data=-1), 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert mesh_shape(MeshConfig(fsdp=-1, tensor=2), 8) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert mesh_shape(MeshConfig(data=2, fsdp=2, tensor=2), 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ConfigError, match=r"mesh data x fsdp x tensor = 6 but there are 8 devices"):
        mesh_shape(MeshConfig(data=3, tensor=2), 8)
    with pytest.raises(ConfigError, match=r"cannot fill 8 devices \(8 is not divisible by 3\)"):
        mesh_shape(MeshConfig(data=3, fsdp=-1), 8)
    with pytest.raises(ConfigError, match="only one of mesh.data, mesh.fsdp, mesh.tensor may be -1"):
        mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)


def test_mesh_group_files_compose():
    for name, sizes in {"single": (1, 1, 1), "dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tp": (1, -1, 2)}.items():
        m = to_config(compose([f"mesh={name}"])).mesh
        assert (m.name, m.data, m.fsdp, m.tensor) == (name, *sizes)


def test_rule_table_and_overrides():
    # activations: the batch takes data and fsdp, so embed (fsdp for parameters) stays whole
    assert sharding.logical_to_spec(("batch", "length", "embed"), sharding.DEFAULT_RULES) == P(
        ("data", "fsdp"), None, None
    )
    rules = sharding.make_rules({"embed": None, "mlp": ["fsdp", "tensor"]})
    assert sharding.logical_to_spec(("embed", "mlp"), rules) == P(None, ("fsdp", "tensor"))
    # a mesh axis is used once per array: the second claimant is replicated
    assert sharding.logical_to_spec(("vocab", "embed"), sharding.make_rules({"vocab": "fsdp"})) == P("fsdp", None)
    assert sharding.DEFAULT_RULES["batch"] == ("data", "fsdp")
