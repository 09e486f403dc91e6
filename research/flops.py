"""Parameter counts, FLOPs per token and MFU: the one source of truth (pure arithmetic).

Conventions
- params: every trainable parameter, excluding vocabulary padding rows (model.vocab_pad_multiple).
- params_embed: token embedding + position table (+ an untied output head, if any).
- params_nonembed: params - params_embed (Kaplan et al.'s N; includes the final LayerNorm).
- flops_per_token_6n = 6 * params_nonembed (Kaplan's C = 6 N D, forward + backward).
- flops_per_token = 6 * (params - params_pos) + 12 * n_layer * n_head * d_head * seq_len
  (PaLM appendix B / nanoGPT's estimate_mfu: the output projection counts through the tied
  embedding, attention scores and values add 12 L H Q T; forward + backward, no remat).
"""

from __future__ import annotations

import os
from typing import Any

from research.config.derived import d_ff, d_head, padded_vocab
from research.config.schema import ModelConfig


def param_counts(model: ModelConfig) -> dict[str, int]:
    D, L, F, V, T = model.d_model, model.n_layer, d_ff(model), model.vocab_size, model.seq_len
    A = model.n_head * d_head(model)  # attention inner width (n_head x d_head; may differ from d_model)
    attn = D * 3 * A + 3 * A + A * D + D  # fused qkv kernel + bias, output projection + bias
    mlp = D * F + F + F * D + D
    norms = 2 * 2 * D  # two LayerNorms (scale, bias) per block
    per_layer = attn + mlp + norms
    params_tok = V * D
    params_pos = T * D
    params_head = 0 if model.tied_embeddings else D * V
    final = 2 * D if model.final_norm else 0
    params = params_tok + params_pos + params_head + L * per_layer + final
    params_embed = params_tok + params_pos + params_head
    pad_rows = padded_vocab(model) - V
    return {
        "params": params,
        "params_embed": params_embed,
        "params_nonembed": params - params_embed,
        "params_pos": params_pos,
        "params_per_layer": per_layer,
        # as allocated in memory: includes the vocab padding rows (and columns of an untied head)
        "params_allocated": params + pad_rows * D * (1 if model.tied_embeddings else 2),
    }


def flops_per_token(model: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """Training FLOPs per token (forward + backward) in both conventions; seq_len = the window."""
    seq_len = model.seq_len if seq_len is None else seq_len
    c = param_counts(model)
    attn = 12 * model.n_layer * model.n_head * d_head(model) * seq_len
    return {
        "flops_per_token_6n": 6 * c["params_nonembed"],
        "flops_per_token": 6 * (c["params"] - c["params_pos"]) + attn,
        "flops_per_token_attention": attn,
    }


# ---------------------------------------------------------------------------------------------
# Device peaks (FLOP/s per device, dense, no sparsity). Matched by substring of
# jax.devices()[0].device_kind, longest key first (so "H100 PCIe" wins over "H100").
# "bfloat16": bf16 tensor-core / MXU peak. "float32": what a float32 matmul gets under JAX's
# default precision: TF32 tensor cores on Ampere and newer, bf16 passes on TPU, FP32 on V100.

CPU_FLOPS_PER_CORE = 160e9  # ESTIMATE: an AVX-512 core, 2 FMA units x 16 float32 x 2 FLOP x ~2.5 GHz

DEVICE_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 494.5e12},  # SXM
    "H200": {"bfloat16": 989e12, "float32": 494.5e12},  # also matches GH200
    "B200": {"bfloat16": 2250e12, "float32": 1125e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L40S": {"bfloat16": 362e12, "float32": 183e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "V100": {"bfloat16": 125e12, "float32": 15.7e12},  # no bf16: the fp16 tensor-core peak
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    # Per core, times the cores this process may use (see cpu_cores); an estimate, not a spec.
    "cpu": {"bfloat16": CPU_FLOPS_PER_CORE, "float32": CPU_FLOPS_PER_CORE},
}


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def device_peak_flops(device_kind: str, dtype: str = "bfloat16", n_devices: int = 1) -> float | None:
    """Total peak FLOP/s of n_devices devices of this kind; None when the kind is unknown.

    On the CPU the peak is per core times the usable cores, whatever n_devices says (fake XLA
    host devices share the same cores).
    """
    kind = device_kind.lower()
    dt = "bfloat16" if dtype in ("bfloat16", "bf16", "float16") else "float32"
    for key in sorted(DEVICE_PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in kind:
            peak = DEVICE_PEAK_FLOPS[key][dt]
            return peak * cpu_cores() if key == "cpu" else peak * n_devices
    return None


def mfu(tokens_per_second: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak; None without a peak."""
    if not peak or peak <= 0:
        return None
    return tokens_per_second * flops_per_token / peak


def summary(model: ModelConfig, seq_len: int | None = None) -> dict[str, Any]:
    """Everything plan.py prints: counts and FLOPs per token for one model config."""
    seq_len = model.seq_len if seq_len is None else seq_len
    out: dict[str, Any] = {"model": model.name, "seq_len": seq_len}
    out.update(param_counts(model))
    out.update(flops_per_token(model, seq_len))
    if model.paper_params:
        out["paper_params"] = model.paper_params
        out["params_vs_paper"] = out["params"] / model.paper_params - 1.0
    return out
