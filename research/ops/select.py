"""Which kernels a run uses, chosen once from (model config, platform, mesh) and recorded.

The model never asks what hardware it runs on: train/programs.py calls `select` with the platform
and the mesh, the chosen `Kernels` travel into the model's modules and the built programs, and
results.json records them. Where a requested fast path cannot run (cuDNN attention off a CUDA GPU,
or without bf16 compute), one warning says why and the XLA kernel runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp

from research.config.derived import d_head

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("xla", "cudnn", "blocked")


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The kernel choices the model's layers follow (static, hashable: part of the model's structure).

    attention          xla (jax.nn.dot_product_attention's XLA path), cudnn (cuDNN flash attention) or
                       blocked (research/ops/blocked_attention.py: query blocks, hand-written backward)
    merge_heads        blocked: fold heads into the batch axis (False when a mesh axis splits the heads,
                       where merging them would all-gather them)
    residual_barrier   write the residual stream's gradient once per block (research/ops/fusion.py),
                       for XLA's CPU fusion
    """

    attention: str = "xla"
    merge_heads: bool = True
    residual_barrier: bool = False

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PORTABLE = Kernels()  # XLA's kernels, no CPU workarounds: the model's default, the same on every platform


def select(model_cfg: Any, platform: str, *, heads_shards: int = 1, lower_only: bool = False) -> Kernels:
    """The kernels for this model on this platform ("cpu", "gpu"/"cuda", "tpu"); `heads_shards` is how many
    ways the mesh splits the attention heads; lower_only: the programs are built for another platform than
    this machine's, to be lowered, not compiled (so the cuDNN probe only lowers)."""
    cpu = platform == "cpu"
    if str(model_cfg.attention_impl) == "cudnn" and cudnn_attention_runs(model_cfg, platform, lower_only=lower_only):
        attention = "cudnn"
    else:
        # The XLA kernel materialises the whole T x T score matrix; on the CPU the blocked one does not.
        attention = "blocked" if cpu else "xla"
    return Kernels(attention=attention, merge_heads=heads_shards <= 1, residual_barrier=cpu)


def attention_impl(kernels: Kernels) -> str:
    """results.json's attention_impl: 'cudnn' when the fused kernel runs, else 'xla' (blocked included)."""
    return "cudnn" if kernels.attention == "cudnn" else "xla"


_warned: set[str] = set()


def cudnn_attention_runs(model_cfg: Any, platform: str, *, lower_only: bool = False) -> bool:
    """Whether cuDNN flash attention compiles here for this model (lower_only: lowers for `platform`); warns once
    per reason when it does not."""
    window = int(model_cfg.local_window) if model_cfg.attention == "alternating" else 0
    reason = _cudnn_unavailable(
        platform,
        str(model_cfg.compute_dtype),
        int(model_cfg.n_head),
        int(d_head(model_cfg)),
        int(model_cfg.seq_len),
        window,
        lower_only,
    )
    if reason is None:
        return True
    if reason not in _warned:
        _warned.add(reason)
        log.warning(
            "SLOW ATTENTION: model.attention_impl=cudnn was asked for but %s; falling back to the xla attention "
            "kernel (slower, more memory). Set model.attention_impl=xla to silence this.",
            reason,
        )
    return False


@functools.cache
def _cudnn_unavailable(
    platform: str, compute_dtype: str, n_head: int, head_size: int, seq_len: int, window: int, lower_only: bool = False
) -> str | None:
    """None when cuDNN flash attention compiles for these shapes (forward and backward; lower_only: lowers for
    CUDA, which needs JAX to detect a cuDNN library but no GPU), else the reason."""
    if platform not in ("gpu", "cuda"):
        return f"the backend is {platform}, not a CUDA GPU"
    if compute_dtype not in ("bfloat16", "float16"):
        return f"cuDNN flash attention needs model.compute_dtype=bfloat16 (got {compute_dtype})"
    if head_size % 8 or head_size > 256:
        return f"cuDNN flash attention needs a head size that is a multiple of 8 and at most 256 (got {head_size})"
    T = min(seq_len, 256)
    qkv = jax.ShapeDtypeStruct((1, T, n_head, head_size), jnp.dtype(compute_dtype))
    local = (window - 1, 0) if window > 0 else None

    def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local, implementation="cudnn")
        return out.astype(jnp.float32).sum()

    try:
        traced = jax.jit(jax.grad(attend, argnums=(0, 1, 2))).trace(qkv, qkv, qkv)
        if lower_only:
            traced.lower(lowering_platforms=("cuda",))
        else:
            traced.lower().compile()
    except Exception as e:  # noqa: BLE001 - any failure means: not available here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        verb = "lower" if lower_only else "compile"
        return f"cuDNN attention did not {verb} for these shapes ({type(e).__name__}: {first})"
    return None
