"""Training memory per device, by kind and remat policy, from the shapes alone (the planner's figures).

An estimate from the shapes, not a measurement: XLA's fusion, temporaries and allocator add to it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from research.config.derived import d_ff, d_head, layer_period, padded_vocab
from research.config.schema import ModelConfig
from research.parallel.rules import logical_shards, logical_to_spec, make_rules

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Device memory in GB (1e9 bytes), matched like the peak table (longest key first). A size in the
# name wins ("A100-40GB" -> 40).
DEVICE_MEMORY_GB: dict[str, float] = {
    "H100 PCIe": 80, "H100": 80, "H200": 141, "B200": 192, "A100": 80, "L40S": 48, "L4": 24, "V100": 32,
    "TPU v6 lite": 32, "TPU v5 lite": 16, "TPU v5p": 95, "TPU v5": 95, "TPU v4": 32,
}  # fmt: skip


def device_memory_gb(device_kind: str) -> float | None:
    """Memory of one device of this kind in GB; None when unknown."""
    sized = re.search(r"(\d+(?:\.\d+)?)\s*G(?:B|iB)?\b", device_kind, re.IGNORECASE)
    if sized:
        return float(sized.group(1))
    kind = device_kind.lower()
    for key in sorted(DEVICE_MEMORY_GB, key=len, reverse=True):
        if key.lower() in kind:
            return DEVICE_MEMORY_GB[key]
    return None


def param_shapes(model: ModelConfig) -> list[tuple[str, tuple[int, ...], tuple[str | None, ...]]]:
    """(path, shape, logical axis names) of every parameter, as research/model.py allocates them
    (vocab padding included; scan_layers stacks each block position along a leading 'layers' axis)."""
    D, N, H, F, T = model.d_model, model.n_head, d_head(model), d_ff(model), model.seq_len
    Vp = padded_vocab(model)
    block = [
        ("ln1.scale", (D,), ("norm",)), ("ln1.bias", (D,), ("norm",)),
        ("attn.qkv_kernel", (D, 3, N, H), ("embed", None, "heads", "head_dim")),
        ("attn.qkv_bias", (3, N, H), (None, "heads", "head_dim")),
        ("attn.out_kernel", (N, H, D), ("heads", "head_dim", "embed")), ("attn.out_bias", (D,), ("embed",)),
        ("ln2.scale", (D,), ("norm",)), ("ln2.bias", (D,), ("norm",)),
        ("mlp.in_kernel", (D, F), ("embed", "mlp")), ("mlp.in_bias", (F,), ("mlp",)),
        ("mlp.out_kernel", (F, D), ("mlp", "embed")), ("mlp.out_bias", (D,), ("embed",)),
    ]  # fmt: skip
    out: list[tuple[str, tuple[int, ...], tuple[str | None, ...]]] = [
        ("wte", (Vp, D), ("vocab", "embed")),
        ("wpe", (T, D), ("length", "embed")),
    ]
    if model.scan_layers:
        period = layer_period(model)
        for p in range(period):
            for name, shape, names in block:
                out.append((f"layers.blocks.{p}.{name}", (model.n_layer // period, *shape), ("layers", *names)))
    else:
        for i in range(model.n_layer):
            out.extend((f"blocks.{i}.{name}", shape, names) for name, shape, names in block)
    if model.final_norm:
        out += [("ln_f.scale", (D,), ("norm",)), ("ln_f.bias", (D,), ("norm",))]
    if not model.tied_embeddings:
        out.append(("head", (D, Vp), ("embed", "vocab")))
    return out


def _local_size(
    shape: tuple[int, ...], names: tuple[str | None, ...], mesh_shape: dict[str, int], rules: dict[str, Any]
) -> float:
    """Elements of one array on one device under the rule table (a mesh axis that does not divide a
    dimension is dropped there, as research/sharding.py does; a 'batch' dimension is rounded up)."""
    spec = tuple(logical_to_spec(names, rules))
    size = 1
    for dim, name, axes in zip(shape, names, spec + (None,) * (len(shape) - len(spec)), strict=True):
        axes_t = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
        shards = math.prod(mesh_shape.get(a, 1) for a in axes_t)
        if name == "batch":
            size *= math.ceil(dim / shards)
        elif shards > 1 and dim % shards == 0:
            size *= dim // shards
        else:
            size *= dim
    return size


def memory_estimate(
    model: ModelConfig,
    *,
    batch_size: int,
    seq_len: int | None = None,
    mesh_shape: dict[str, int] | None = None,
    rules: dict[str, Any] | None = None,
    microbatches: int = 1,
) -> dict[str, Any]:
    """Training memory per device in bytes, by kind, for each remat policy (see the README table).

    weights      master parameters in param_dtype, divided by the shards of their logical axes
    compute      compute_dtype copies: casts of the local shards (when compute_dtype differs from
                 param_dtype) plus one layer all-gathered across the FSDP shards (when sharded)
    grads        param_dtype, like the weights (twice with gradient accumulation: sum + microbatch)
    optimizer    AdamW's two moments in param_dtype
    activations  what the backward pass keeps for one microbatch on this device: per layer the
                 residual stream (float32), LayerNorm outputs, q/k/v, attention output and MLP
                 hidden states (compute dtype), and with attention_impl=xla the T x T attention
                 probabilities; remat=dots_saveable keeps only matmul outputs, remat=full only each
                 block's input, both plus one layer recomputed; then the logits (float32) twice.
    """
    seq_len = model.seq_len if seq_len is None else seq_len
    mesh_shape = dict(mesh_shape or {"data": 1, "fsdp": 1, "tensor": 1})
    rules = make_rules(rules)
    pb, cb = DTYPE_BYTES[model.param_dtype], DTYPE_BYTES[model.compute_dtype]
    shapes = param_shapes(model)
    local = sum(_local_size(s, n, mesh_shape, rules) for _, s, n in shapes)
    total = sum(math.prod(s) for _, s, _ in shapes)

    # one layer's parameters as the forward pass sees them: gathered over everything but tensor parallelism
    tensor_only = {**{a: 1 for a in mesh_shape}, "tensor": mesh_shape.get("tensor", 1)}
    layer = [(s[1:], n[1:]) if n[:1] == ("layers",) else (s, n) for p, s, n in shapes if "blocks.0." in p]
    layer_gathered = sum(_local_size(s, n, tensor_only, rules) for s, n in layer)
    layer_local = sum(_local_size(s, n, mesh_shape, rules) for s, n in layer)
    gathered = layer_gathered if layer_local < layer_gathered else 0

    weights = pb * local
    compute = (cb * local if model.compute_dtype != model.param_dtype else 0) + cb * gathered
    grads = pb * local * (2 if microbatches > 1 else 1)
    optimizer = 2 * pb * local

    b = math.ceil(batch_size / microbatches)
    activations = _activations(model, b, seq_len, mesh_shape, rules)
    fixed = weights + compute + grads + optimizer
    return {
        "weights_bf16_bytes": 2 * total,  # the rule of thumb: 2 bytes x every parameter, unsharded
        "params_per_device": local,
        "batch_per_device": math.ceil(b / logical_shards(mesh_shape, rules, "batch")),  # sequences per microbatch
        "weights_bytes": weights,
        "compute_weights_bytes": compute,
        "compute_gathered_layer_bytes": cb * gathered,  # the FSDP part of compute_weights_bytes
        "grads_bytes": grads,
        "optimizer_bytes": optimizer,
        "activations_bytes": activations[model.remat],
        "total_bytes": fixed + activations[model.remat],
        "activations_bytes_by_remat": activations,
        "total_bytes_by_remat": {k: fixed + v for k, v in activations.items()},
        "dtypes": {
            "weights": model.param_dtype,
            "compute": model.compute_dtype,
            "grads": model.param_dtype,
            "optimizer": model.param_dtype,
            "activations": f"{model.compute_dtype} (residual stream and logits float32)",
        },
    }


def _activations(
    model: ModelConfig, b: int, T: int, mesh_shape: dict[str, int], rules: dict[str, Any]
) -> dict[str, float]:
    """Bytes the backward pass keeps for one microbatch of b sequences on one device, by remat policy."""
    cb = DTYPE_BYTES[model.compute_dtype]
    D, F, N, H, V, L = model.d_model, d_ff(model), model.n_head, d_head(model), model.vocab_size, model.n_layer

    def loc(shape: tuple[int, ...], names: tuple[str, ...]) -> float:
        return _local_size(shape, names, mesh_shape, rules)

    btd = loc((b, T, D), ("batch", "length", "embed"))
    btnh = loc((b, T, N, H), ("batch", "length", "heads", "head_dim"))
    btf = loc((b, T, F), ("batch", "length", "mlp"))
    bntt = loc((b, N, T, T), ("batch", "heads", "length", "length"))
    bnt = loc((b, N, T), ("batch", "heads", "length"))
    btv = loc((b, T, V), ("batch", "length", "vocab"))
    flash = model.attention_impl == "cudnn"
    attn_none = 4 * bnt if flash else (4 + cb) * bntt  # cudnn: log-sum-exp; xla: float32 softmax + probs
    per_layer = {
        "none": 2 * 4 * btd + 2 * cb * btd + 3 * cb * btnh + cb * btnh + 2 * cb * btf + attn_none,
        # matmul outputs: qkv, attention scores (xla, float32) and values, out projection, MLP in and out
        "dots_saveable": 4 * btd + 3 * cb * btnh + (0 if flash else 4 * bntt + cb * btnh) + 2 * cb * btd + cb * btf,
        "full": 4 * btd,
    }
    outside = 4 * btd + cb * btd + 2 * 4 * btv  # final residual, ln_f output, logits + their gradient
    return {
        remat: L * per_layer[remat] + (per_layer["none"] if remat != "none" else 0) + outside for remat in per_layer
    }
