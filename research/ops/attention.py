"""Causal self-attention, dispatched to the kernel chosen by research/ops/select.py.

    o_BTNH = attention(q_BTNH, k_BTNH, v_BTNH, window=0, kernels=kernels)

softmax(Q K^T / sqrt(d_head)) V with a causal mask (window > 0: each query sees only the `window`
most recent keys, itself included); the softmax runs in float32 whatever the kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.ops.blocked_attention import blocked_causal_attention
from research.ops.select import Kernels


def attention(q_BTNH: jax.Array, k_BTNH: jax.Array, v_BTNH: jax.Array, *, window: int, kernels: Kernels) -> jax.Array:
    if kernels.attention == "blocked":
        return blocked_causal_attention(q_BTNH, k_BTNH, v_BTNH, window, merge_heads=kernels.merge_heads)
    return jax.nn.dot_product_attention(
        q_BTNH,
        k_BTNH,
        v_BTNH,
        is_causal=True,
        local_window_size=(window - 1, 0) if window > 0 else None,
        implementation="cudnn" if kernels.attention == "cudnn" else None,
    )


def cached_attention(
    q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array, pos: jax.Array, *, window: int
) -> jax.Array:
    """Attention of T new queries at positions pos..pos+T-1 to a fixed-size key/value cache [B, S, N, H]
    (sampling): every cached position up to the query's own, within the band for a local layer. XLA's
    kernel with an explicit mask, on every platform."""
    q_pos_T1 = pos + jnp.arange(q_BTNH.shape[1])[:, None]
    k_pos_1S = jnp.arange(k_BSNH.shape[1])[None, :]
    mask_TS = k_pos_1S <= q_pos_T1  # causal; cache slots past the newest token are never read
    if window > 0:
        mask_TS = mask_TS & (k_pos_1S > q_pos_T1 - window)
    return jax.nn.dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask=mask_TS[None, None], implementation="xla")
