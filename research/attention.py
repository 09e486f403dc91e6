"""Causal attention for the CPU: blocked over queries, with a hand-written backward pass.

jax.nn.dot_product_attention's XLA kernel computes the whole T x T score matrix, masked upper triangle
included, and autodiff of it runs its backward matmuls in float32 with many small pads and adds. Here
each block of `block` queries meets only the keys up to its last row (and, with window > 0, none
before its band): 5/8 of the full work at T = 4 blocks. The backward pass recomputes the probabilities
from the saved log-sum-exp (as FlashAttention does) in the keys-by-queries orientation, so three of its
four matmuls take the forms XLA's CPU library kernels run fastest (the contraction on the last axis of
the left operand), and it returns dq, dk, dv whole. Scores and softmax are float32; matmul inputs are in
the dtype of q, k, v with float32 accumulation. Equal to jax.nn.dot_product_attention(is_causal=True)
in value and gradient (tests/test_runtime.py). Measured in docs/performance.md.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from research.matmul import einsum_f32

F32 = jnp.float32
NEG = float(jnp.finfo(F32).min)

# Query rows per block (32/64/128/256 measured within the CPU machine's drift, docs/performance.md).
ATTENTION_BLOCK = 64


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


def _forward(q_BNTH, k_BNTH, v_BNTH, window, block):
    """Heads-major inputs; returns (o_BNTH in the input dtype, lse_BNT float32)."""
    scale = 1.0 / math.sqrt(q_BNTH.shape[-1])
    outs, lses = [], []
    for start, end, k0 in _blocks(q_BNTH.shape[2], window, block):
        s_BNQK = einsum_f32("BNQH,BNKH->BNQK", q_BNTH[:, :, start:end], k_BNTH[:, :, k0:end]) * scale
        s_BNQK = jnp.where(_mask_QK(start, end, k0, window), s_BNQK, NEG)
        m_BNQ1 = s_BNQK.max(-1, keepdims=True)
        p_BNQK = jnp.exp(s_BNQK - m_BNQ1)  # unnormalised: divide the [Q, H] output, not the [Q, K] matrix
        l_BNQ1 = p_BNQK.sum(-1, keepdims=True)
        o_BNQH = einsum_f32("BNQK,BNKH->BNQH", p_BNQK.astype(v_BNTH.dtype), v_BNTH[:, :, k0:end]) / l_BNQ1
        outs.append(o_BNQH.astype(v_BNTH.dtype))
        lses.append((m_BNQ1 + jnp.log(l_BNQ1))[..., 0])
    cat = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=2)  # noqa: E731
    return cat(outs), cat(lses)


def _contract_keys(ds_BNKQ: jax.Array, k_BNKH: jax.Array) -> jax.Array:
    """dQ = dS^T K, contracting the keys, the leading axis of both. Written as a contraction over two axes
    (the keys split in halves), which XLA's CPU compiler turns into one transpose and a fast matmul,
    about 2x the plain einsum (docs/performance.md)."""
    B, N, K, Q = ds_BNKQ.shape
    if K % 2:
        return einsum_f32("BNKQ,BNKH->BNQH", ds_BNKQ, k_BNKH)
    return einsum_f32("BNabQ,BNabH->BNQH", ds_BNKQ.reshape(B, N, 2, K // 2, Q), k_BNKH.reshape(B, N, 2, K // 2, -1))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q_BNTH, k_BNTH, v_BNTH, window, block):
    return _forward(q_BNTH, k_BNTH, v_BNTH, window, block)[0]


def _attention_fwd(q_BNTH, k_BNTH, v_BNTH, window, block):
    o_BNTH, lse_BNT = _forward(q_BNTH, k_BNTH, v_BNTH, window, block)
    return o_BNTH, (q_BNTH, k_BNTH, v_BNTH, o_BNTH, lse_BNT)


def _attention_bwd(window, block, residuals, do_BNTH):
    q_BNTH, k_BNTH, v_BNTH, o_BNTH, lse_BNT = residuals
    cd = q_BNTH.dtype
    scale = 1.0 / math.sqrt(q_BNTH.shape[-1])
    do_BNTH = do_BNTH.astype(cd)
    # D = rowsum(dO * O): the softmax backward's correction term, one number per query
    delta_BNT = (do_BNTH.astype(F32) * o_BNTH.astype(F32)).sum(-1)
    dq_blocks = []
    dk_BNTH = jnp.zeros(k_BNTH.shape, F32)
    dv_BNTH = jnp.zeros(v_BNTH.shape, F32)
    for start, end, k0 in _blocks(q_BNTH.shape[2], window, block):
        q_BNQH, do_BNQH = q_BNTH[:, :, start:end], do_BNTH[:, :, start:end]
        k_BNKH, v_BNKH = k_BNTH[:, :, k0:end], v_BNTH[:, :, k0:end]
        # keys x queries, so that dK and dV contract over the last axis of their left operand
        s_BNKQ = einsum_f32("BNKH,BNQH->BNKQ", k_BNKH, q_BNQH) * scale
        lse_BN1Q = lse_BNT[:, :, None, start:end]
        p_BNKQ = jnp.where(_mask_QK(start, end, k0, window).T, jnp.exp(s_BNKQ - lse_BN1Q), 0.0)
        dv_BNTH = dv_BNTH.at[:, :, k0:end].add(einsum_f32("BNKQ,BNQH->BNKH", p_BNKQ.astype(cd), do_BNQH))
        dp_BNKQ = einsum_f32("BNKH,BNQH->BNKQ", v_BNKH, do_BNQH)
        ds_BNKQ = (p_BNKQ * (dp_BNKQ - delta_BNT[:, :, None, start:end]) * scale).astype(cd)
        dk_BNTH = dk_BNTH.at[:, :, k0:end].add(einsum_f32("BNKQ,BNQH->BNKH", ds_BNKQ, q_BNQH))
        dq_blocks.append(_contract_keys(ds_BNKQ, k_BNKH))
    dq_BNTH = dq_blocks[0] if len(dq_blocks) == 1 else jnp.concatenate(dq_blocks, axis=2)
    return dq_BNTH.astype(cd), dk_BNTH.astype(cd), dv_BNTH.astype(cd)


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_causal_attention(
    q_BTNH: jax.Array, k_BTNH: jax.Array, v_BTNH: jax.Array, window: int = 0, block: int = ATTENTION_BLOCK
) -> jax.Array:
    """Causal softmax(Q K^T / sqrt(d_head)) V over [B, T, N, H] inputs (window > 0: each query sees only the
    `window` most recent keys, itself included); the result has the layout and dtype of v."""
    q_BNTH, k_BNTH, v_BNTH = (jnp.swapaxes(t, 1, 2) for t in (q_BTNH, k_BTNH, v_BTNH))
    return jnp.swapaxes(_attention(q_BNTH, k_BNTH, v_BNTH, int(window), int(block)), 1, 2)
