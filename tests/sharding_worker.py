"""Sharded training on 8 fake CPU devices, run as a subprocess by tests/integration/test_sharding.py.

    python tests/sharding_worker.py OUT.json

The XLA flag that makes 8 host devices must be set before JAX is imported, so this runs in its
own process (the pytest process keeps its single device). It trains a tiny nano_s-shaped model
(2 heads, d_model 32, vocab 384: every sharded dimension divides by 8 and by tensor=2) through
the train loop's own programs (research/train/programs.py: the mesh, the rule table, the state born
sharded, the train step with explicit in/out shardings and donated state) and writes, per case,
the losses of 10 steps and every parameter's and optimizer moment's sharding check.
"""

from __future__ import annotations

import os
import sys

# 8 host devices; LLVM optimisation off: ~40% less compile time for these tiny models, and every
# case (the one-device reference too) compiles the same way, so the comparisons are unaffected.
_FLAGS = " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + _FLAGS).strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from research.config.schema import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from research.parallel.mesh import describe  # noqa: E402
from research.train import programs  # noqa: E402

STEPS = 10
BATCH = 16
SEQ = 32
MODEL = ModelConfig(name="nano_s", n_layer=2, d_model=32, n_head=2, vocab_size=384, seq_len=SEQ)
OPTIM = OptimConfig(lr=1e-2, warmup_steps=2)

# What the default rule table must give each parameter, written out by hand (logical names in
# research/model/layers.py; batch -> (data, fsdp), embed -> fsdp, heads/mlp/vocab -> tensor).
EXPECTED: dict[str, tuple[Any, ...]] = {
    "wte": ("tensor", "fsdp"),  # (vocab, embed)
    "wpe": (None, "fsdp"),  # (length, embed)
    "attn.qkv_kernel": ("fsdp", None, "tensor", None),  # (embed, 3, heads, head_dim)
    "attn.qkv_bias": (None, "tensor", None),
    "attn.out_kernel": ("tensor", None, "fsdp"),  # (heads, head_dim, embed)
    "attn.out_bias": ("fsdp",),
    "mlp.in_kernel": ("fsdp", "tensor"),  # (embed, mlp)
    "mlp.in_bias": ("tensor",),
    "mlp.out_kernel": ("tensor", "fsdp"),  # (mlp, embed)
    "mlp.out_bias": ("fsdp",),
    "scale": (None,),  # LayerNorm
    "bias": (None,),
}


def batches(n: int = STEPS, batch: int = BATCH) -> np.ndarray:
    """Learnable token streams: arithmetic progressions mod vocab with a random start and stride."""
    rng = np.random.default_rng(0)
    start = rng.integers(0, MODEL.vocab_size, size=(n, batch, 1))
    stride = rng.integers(1, 4, size=(n, batch, 1))
    return ((start + stride * np.arange(SEQ + 1)) % MODEL.vocab_size).astype(np.int32)


def key_of(path: tuple[Any, ...]) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    names = [n for n in names if n not in ("value", "raw_value")]
    leaf = names[-1]
    for owner in ("attn", "mlp"):
        if owner in names and f"{owner}.{leaf}" in EXPECTED:
            return f"{owner}.{leaf}"
    return leaf


def check_shardings(
    tree: Any, mesh: jax.sharding.Mesh, expected: dict[str, tuple[Any, ...]], scanned: bool
) -> list[str]:
    """Every array leaf against the hand-written table; returns the mismatches (empty = all match)."""
    bad, seen = [], 0
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        where = jax.tree_util.keystr(path)
        key = key_of(path)
        if key not in expected:
            bad.append(f"{where}: no expectation for {key}")
            continue
        spec = expected[key]
        if scanned and ("layers" in where):
            spec = (None, *spec)  # the stacked 'layers' axis is replicated
        want = NamedSharding(mesh, PartitionSpec(*spec))
        if not x.sharding.is_equivalent_to(want, x.ndim):
            bad.append(f"{where}: {x.sharding.spec} != {want.spec}")
        seen += 1
    if not seen:
        bad.append("no leaves checked")
    return bad


def opt_moments(opt_state: Any) -> list[Any]:
    """The AdamW first and second moments (parameter-shaped trees) inside the optax chain state."""
    out = []
    for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu") and hasattr(s, "nu")):
        if hasattr(s, "mu"):
            out += [s.mu, s.nu]
    return out


def run_config(mesh_cfg: MeshConfig, model: ModelConfig, microbatches: int = 1) -> Config:
    """The run's config: STEPS steps of BATCH x SEQ, warmup 2 (OPTIM), the guard's defaults."""
    train = TrainConfig(batch_size=BATCH, seq_len=SEQ, steps=STEPS, microbatches=microbatches, streams=1)
    return Config(model=model, data=DataConfig(vocab_size=model.vocab_size), optim=OPTIM, train=train, mesh=mesh_cfg)


def train(
    mesh_cfg: MeshConfig,
    model: ModelConfig = MODEL,
    microbatches: int = 1,
    params_from: dict | None = None,
    check: bool = True,
    data: np.ndarray | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    print(
        f"[worker] {mesh_cfg} {model.remat} scan={model.scan_layers} {model.compute_dtype} mb={microbatches}",
        file=sys.stderr,
        flush=True,
    )
    data = batches() if data is None else data
    n = (
        math.prod(max(v, 1) for v in (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor))
        if -1 not in (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
        else jax.device_count()
    )
    p = programs.build(run_config(mesh_cfg, model, microbatches), devices=jax.devices()[:n])
    mesh, shardings = p.mesh, p.shardings
    state = p.init_state(0)
    # (a copy: a host view of a CPU buffer would pin it, and the step could not donate it)
    init_params = jax.device_get(jax.tree.map(jnp.copy, nnx.to_pure_dict(state.params)))
    if params_from is not None:  # the plain model's weights, stacked for scan_layers
        params = state.params
        nnx.replace_by_pure_dict(params, params_from)
        state = state.replace(params=jax.device_put(params, shardings.params))
    out: dict[str, Any] = {"mesh": describe(mesh)}
    if check:
        scanned = model.scan_layers
        expected = {**EXPECTED}
        out["param_mismatches"] = check_shardings(state.params, mesh, expected, scanned)
        out["moment_mismatches"] = [
            m for t in opt_moments(state.opt_state) for m in check_shardings(t, mesh, expected, scanned)
        ]
        out["n_moments"] = len(opt_moments(state.opt_state))
        out["other_replicated"] = all(
            x.sharding.is_fully_replicated for x in jax.tree.leaves((state.step, state.rng, state.guard))
        )
    batch_sh = p.batch_sharding
    out["batch_spec"] = str(batch_sh.spec)
    step = p.train_step  # made in the mesh context; traced at its first call below, outside it
    losses = []
    for i in range(len(data)):
        old_leaves = jax.tree.leaves(state)
        state, metrics = step(state, jax.device_put(data[i], batch_sh))
        if i == 0:
            out["donated"] = all(x.is_deleted() for x in old_leaves)
        losses.append(float(metrics["loss"]))
    out["losses"] = losses
    if check:
        out["param_mismatches_after"] = check_shardings(state.params, mesh, EXPECTED, model.scan_layers)
    out["params"] = state.params
    out["init_params"] = init_params
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def stacked(pure: dict, n_layer: int) -> dict:
    """The plain model's parameters (a pure dict) in the scan_layers layout (layer i -> layers.blocks.0[i])."""
    pure = dict(pure)
    blocks = [pure["blocks"][i] for i in range(n_layer)]
    pure.pop("blocks")
    pure["layers"] = {"blocks": {0: jax.tree.map(lambda *xs: jnp.stack([np.asarray(x) for x in xs]), *blocks)}}
    return pure


def main(out_path: str) -> None:
    meshes = {
        "single": MeshConfig(name="single"),
        "dp8": MeshConfig(name="dp", data=-1),
        "fsdp8": MeshConfig(name="fsdp", fsdp=-1),
        "fsdp4_tp2": MeshConfig(name="fsdp_tp", fsdp=-1, tensor=2),
        "d2_f2_t2": MeshConfig(name="free", data=2, fsdp=2, tensor=2),
    }
    results: dict[str, Any] = {"n_devices": jax.device_count()}
    runs = {name: train(m, check=name != "single") for name, m in meshes.items()}
    plain_init = runs["single"]["init_params"]
    for name, r in runs.items():
        r.pop("params"), r.pop("init_params")
        results[f"mesh/{name}"] = r

    # Gradient accumulation: 4 microbatches of 4 rows over the 4 batch shards of data=2 x fsdp=2.
    r = train(meshes["d2_f2_t2"], microbatches=4, check=False)
    r.pop("params"), r.pop("init_params")
    results["microbatches4/d2_f2_t2"] = r

    # Memory options on fsdp=4 x tensor=2, against the plain model there.
    variants = {
        "remat_dots_saveable": dataclasses.replace(MODEL, remat="dots_saveable"),
        "scan_remat_full": dataclasses.replace(MODEL, scan_layers=True, remat="full"),  # the big-model setting
    }
    for name, model in variants.items():
        src = stacked(plain_init, MODEL.n_layer) if model.scan_layers else None
        r = train(meshes["fsdp4_tp2"], model=model, params_from=src, check=model.scan_layers)
        r.pop("params"), r.pop("init_params")
        results[f"{name}/fsdp4_tp2"] = r

    # Mixed precision: float32 parameters and optimizer state, bfloat16 matmuls.
    bf16 = dataclasses.replace(MODEL, compute_dtype="bfloat16")
    r = train(meshes["d2_f2_t2"], model=bf16, check=False)
    r.pop("init_params")
    results["param_dtypes_bf16"] = sorted({str(x.dtype) for x in jax.tree.leaves(r.pop("params"))})
    results["bf16/d2_f2_t2"] = r

    # A rule-table override from config (mesh.rules): MLP and heads replicated, vocab over fsdp.
    over = MeshConfig(name="fsdp_tp", fsdp=-1, tensor=2, rules={"mlp": None, "heads": None, "vocab": "fsdp"})
    p = programs.build(run_config(over, MODEL))
    mesh, state = p.mesh, p.init_state(0)
    expected = {
        **EXPECTED,
        "wte": ("fsdp", None),  # vocab -> fsdp takes the axis; embed (also fsdp) is left replicated
        "attn.qkv_kernel": ("fsdp", None, None, None),
        "attn.qkv_bias": (None, None, None),
        "attn.out_kernel": (None, None, "fsdp"),
        "mlp.in_kernel": ("fsdp", None),
        "mlp.in_bias": (None,),
        "mlp.out_kernel": (None, "fsdp"),
    }
    results["override_mismatches"] = check_shardings(state.params, mesh, expected, False)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
