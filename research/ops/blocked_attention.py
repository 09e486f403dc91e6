"""Causal attention for the CPU: blocked over queries, with a hand-written backward pass.

jax.nn.dot_product_attention's XLA kernel computes the whole T x T score matrix, masked upper triangle
included, and autodiff of it runs its backward matmuls in float32 with many small pads and adds. Here
each block of `block` queries meets only the keys up to its last row (and, with window > 0, none
before its band): 5/8 of the full work at T = 4 blocks. Scores and softmax are float32; matmul inputs
are in the dtype of q, k, v with float32 accumulation. The backward pass either reuses the forward's
probabilities (saved in the input dtype, 5/8 of a T x T matrix per sequence and head: the default up to
SAVE_PROBS_MAX_LEN) or, for longer sequences, recomputes them from the saved log-sum-exp as FlashAttention
does (memory linear in T). Equal to jax.nn.dot_product_attention(is_causal=True) in value and gradient
(tests/unit/test_blocked_attention.py). What each choice was worth: docs/performance.md.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from research.ops.matmul import einsum_f32

F32 = jnp.float32
NEG = float(jnp.finfo(F32).min)

# Query rows per block (the sizes compared: docs/performance.md).
ATTENTION_BLOCK = 64
# Longest sequence whose probabilities the backward pass reuses rather than recomputes. Beyond it they
# outweigh the rest of a layer's activations (N * T * 5/8 values per token against about 18 * d_model).
SAVE_PROBS_MAX_LEN = 1024


def _blocks(T: int, window: int, block: int) -> list[tuple[int, int, int]]:
    """(first query, end query, first key) per query block; the keys of a block end with its queries."""
    out = []
    for start in range(0, T, block):
        end = min(start + block, T)
        out.append((start, end, max(0, start - window + 1) if window > 0 else 0))
    return out


def _mask_QK(start: int, end: int, k0: int, window: int) -> jax.Array:
    q_pos_Q1 = jnp.arange(start, end)[:, None]
    k_pos_1K = jnp.arange(k0, end)[None, :]
    mask_QK = k_pos_1K <= q_pos_Q1
    if window > 0:
        mask_QK = mask_QK & (k_pos_1K > q_pos_Q1 - window)
    return mask_QK


def _forward(q_GTH, k_GTH, v_GTH, window, block):
    """Inputs [*G, T, H] (G: batch and heads). Returns o_GTH in the input dtype, and float32 per query:
    the log-sum-exp lse_GT and 1 / softmax denominator inv_l_GT; and per query block the unnormalised
    probabilities p_GQK in the input dtype (exactly what multiplies V; masked keys are exactly 0)."""
    scale = 1.0 / math.sqrt(q_GTH.shape[-1])
    outs, lses, inv_ls, probs = [], [], [], []
    for start, end, k0 in _blocks(q_GTH.shape[-2], window, block):
        s_GQK = einsum_f32("...QH,...KH->...QK", q_GTH[..., start:end, :], k_GTH[..., k0:end, :]) * scale
        s_GQK = jnp.where(_mask_QK(start, end, k0, window), s_GQK, NEG)
        m_GQ1 = s_GQK.max(-1, keepdims=True)
        # unnormalised, and summed as rounded: divide the [Q, H] output, not the [Q, K] matrix
        p_GQK = jnp.exp(s_GQK - m_GQ1).astype(v_GTH.dtype)
        l_GQ1 = p_GQK.astype(F32).sum(-1, keepdims=True)
        inv_l_GQ1 = 1.0 / l_GQ1
        o_GQH = einsum_f32("...QK,...KH->...QH", p_GQK, v_GTH[..., k0:end, :]) * inv_l_GQ1
        outs.append(o_GQH.astype(v_GTH.dtype))
        lses.append((m_GQ1 + jnp.log(l_GQ1))[..., 0])
        inv_ls.append(inv_l_GQ1[..., 0])
        probs.append(p_GQK)
    cat = lambda xs, axis: xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=axis)  # noqa: E731
    return cat(outs, -2), cat(lses, -1), cat(inv_ls, -1), tuple(probs)


def _contract_rows(a_GRX: jax.Array, b_GRY: jax.Array) -> jax.Array:
    """A^T B per leading index, contracting the rows R (the second-to-last axis of both): dQ from keys-major
    dS, dK and dV from queries-major P and dS. Written as a contraction over two axes (the rows split in
    halves), which XLA's CPU compiler turns into one transpose and a fast matmul, faster than the plain einsum
    (docs/performance.md)."""
    *G, R, X = a_GRX.shape
    if R % 2:
        return einsum_f32("...RX,...RY->...XY", a_GRX, b_GRY)
    return einsum_f32("...abX,...abY->...XY", a_GRX.reshape(*G, 2, R // 2, X), b_GRY.reshape(*G, 2, R // 2, -1))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attention(q_GTH, k_GTH, v_GTH, window, block, save_probs):
    return _forward(q_GTH, k_GTH, v_GTH, window, block)[0]


def _attention_fwd(q_GTH, k_GTH, v_GTH, window, block, save_probs):
    o_GTH, lse_GT, inv_l_GT, probs = _forward(q_GTH, k_GTH, v_GTH, window, block)
    saved = (probs, inv_l_GT) if save_probs else (lse_GT,)
    return o_GTH, (q_GTH, k_GTH, v_GTH, o_GTH, *saved)


def _attention_bwd(window, block, save_probs, residuals, do_GTH):
    backward = _backward_saved if save_probs else _backward_recomputed
    return backward(window, block, residuals, do_GTH)


def _backward_recomputed(window, block, residuals, do_GTH):
    """The backward pass from the log-sum-exp: probabilities recomputed block by block, keys-major."""
    q_GTH, k_GTH, v_GTH, o_GTH, lse_GT = residuals
    cd = q_GTH.dtype
    scale = 1.0 / math.sqrt(q_GTH.shape[-1])
    do_GTH = do_GTH.astype(cd)
    # D = rowsum(dO * O): the softmax backward's correction term, one number per query
    delta_GT = (do_GTH.astype(F32) * o_GTH.astype(F32)).sum(-1)
    dq_blocks = []
    dk_GTH = jnp.zeros(k_GTH.shape, F32)
    dv_GTH = jnp.zeros(v_GTH.shape, F32)
    for start, end, k0 in _blocks(q_GTH.shape[-2], window, block):
        q_GQH, do_GQH = q_GTH[..., start:end, :], do_GTH[..., start:end, :]
        k_GKH, v_GKH = k_GTH[..., k0:end, :], v_GTH[..., k0:end, :]
        # keys x queries, so that dK and dV contract over the last axis of their left operand
        s_GKQ = einsum_f32("...KH,...QH->...KQ", k_GKH, q_GQH) * scale
        lse_G1Q = lse_GT[..., None, start:end]
        p_GKQ = jnp.where(_mask_QK(start, end, k0, window).T, jnp.exp(s_GKQ - lse_G1Q), 0.0)
        dv_GTH = dv_GTH.at[..., k0:end, :].add(einsum_f32("...KQ,...QH->...KH", p_GKQ.astype(cd), do_GQH))
        dp_GKQ = einsum_f32("...KH,...QH->...KQ", v_GKH, do_GQH)
        ds_GKQ = (p_GKQ * (dp_GKQ - delta_GT[..., None, start:end]) * scale).astype(cd)
        dk_GTH = dk_GTH.at[..., k0:end, :].add(einsum_f32("...KQ,...QH->...KH", ds_GKQ, q_GQH))
        dq_blocks.append(_contract_rows(ds_GKQ, k_GKH))
    dq_GTH = dq_blocks[0] if len(dq_blocks) == 1 else jnp.concatenate(dq_blocks, axis=-2)
    return dq_GTH.astype(cd), dk_GTH.astype(cd), dv_GTH.astype(cd)


def _backward_saved(window, block, residuals, do_GTH):
    """The backward pass from the forward's probabilities: no score matmul, exponential or mask again."""
    q_GTH, k_GTH, v_GTH, o_GTH, probs, inv_l_GT = residuals
    cd = q_GTH.dtype
    scale = 1.0 / math.sqrt(q_GTH.shape[-1])
    do_GTH = do_GTH.astype(cd)
    delta_GT = (do_GTH.astype(F32) * o_GTH.astype(F32)).sum(-1)
    # dV = P^T dO with P = p / l: fold 1 / l into dO ([T, H]) rather than into p ([Q, K])
    do_scaled_GTH = (do_GTH.astype(F32) * inv_l_GT[..., None]).astype(cd)
    dq_blocks = []
    dk_GTH = jnp.zeros(k_GTH.shape, F32)
    dv_GTH = jnp.zeros(v_GTH.shape, F32)
    for (start, end, k0), p_GQK in zip(_blocks(q_GTH.shape[-2], window, block), probs, strict=True):
        q_GQH, do_GQH = q_GTH[..., start:end, :], do_GTH[..., start:end, :]
        k_GKH, v_GKH = k_GTH[..., k0:end, :], v_GTH[..., k0:end, :]
        dv_GTH = dv_GTH.at[..., k0:end, :].add(_contract_rows(p_GQK, do_scaled_GTH[..., start:end, :]))
        dp_GQK = einsum_f32("...QH,...KH->...QK", do_GQH, v_GKH)
        row_GQ1 = inv_l_GT[..., start:end, None] * scale
        ds_GQK = (p_GQK.astype(F32) * ((dp_GQK - delta_GT[..., start:end, None]) * row_GQ1)).astype(cd)
        dk_GTH = dk_GTH.at[..., k0:end, :].add(_contract_rows(ds_GQK, q_GQH))
        dq_blocks.append(einsum_f32("...QK,...KH->...QH", ds_GQK, k_GKH))
    dq_GTH = dq_blocks[0] if len(dq_blocks) == 1 else jnp.concatenate(dq_blocks, axis=-2)
    return dq_GTH.astype(cd), dk_GTH.astype(cd), dv_GTH.astype(cd)


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_causal_attention(
    q_BTNH: jax.Array,
    k_BTNH: jax.Array,
    v_BTNH: jax.Array,
    window: int = 0,
    block: int = ATTENTION_BLOCK,
    save_probs: bool | None = None,
    *,
    merge_heads: bool = True,
) -> jax.Array:
    """Causal softmax(Q K^T / sqrt(d_head)) V over [B, T, N, H] inputs (window > 0: each query sees only the
    `window` most recent keys, itself included); the result has the layout and dtype of v. save_probs:
    whether the backward pass reuses the forward's probabilities (None: when T <= SAVE_PROBS_MAX_LEN).
    merge_heads=False where a mesh axis splits the heads (merging a sharded minor axis would all-gather it)."""
    B, T, N, H = q_BTNH.shape
    save = T <= SAVE_PROBS_MAX_LEN if save_probs is None else bool(save_probs)
    q_BNTH, k_BNTH, v_BNTH = (jnp.swapaxes(t, 1, 2) for t in (q_BTNH, k_BTNH, v_BTNH))
    if not merge_heads:
        return jnp.swapaxes(_attention(q_BNTH, k_BNTH, v_BNTH, int(window), int(block), save), 1, 2)
    # Batch and heads merged: the reshape makes the transposes real bf16 copies. Fed a bare transpose, XLA's
    # CPU compiler runs a bf16 dot in float32 (its operand upcaster rejects the transposed layout): every
    # dot of the last query block, the full-length one, at half the bf16 rate (docs/performance.md).
    q_GTH, k_GTH, v_GTH = (t.reshape(B * N, T, H) for t in (q_BNTH, k_BNTH, v_BNTH))
    o_GTH = _attention(q_GTH, k_GTH, v_GTH, int(window), int(block), save)
    return jnp.swapaxes(o_GTH.reshape(B, N, T, H), 1, 2)
