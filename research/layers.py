"""GPT building blocks in Flax NNX: LayerNorm, causal self-attention, MLP, transformer block.

Every parameter carries logical axis names in its `out_sharding` metadata (see
research/sharding.py for the logical -> mesh table). Parameters live in `param_dtype`; matmuls
run in `compute_dtype`; LayerNorm statistics and the attention softmax run in float32. The
residual stream itself is kept in float32 (as PyTorch autocast does for nanoGPT), so bf16 only
touches the matmul inputs and the activations saved between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig, d_ff, d_head
from research.sharding import constrain, resolve_attention_impl

Init = Callable[..., jax.Array]
BTD = ("batch", "length", "embed")


def param(key: jax.Array | None, init: Init, shape: Sequence[int], names: Sequence[str | None], dtype) -> nnx.Param:
    """A parameter with logical axis names as metadata only (eager sharding off).

    Modules draw one key from `rngs` and split it, rather than one `rngs.params()` per
    parameter: each draw costs time linear in the traced program under nnx.eval_shape, so
    per-parameter draws make abstract init of a 96-layer model quadratic (~30 s for 175B).
    """
    return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False)


def normal(std: float) -> Init:
    return jax.nn.initializers.normal(stddev=std)


zeros: Init = jax.nn.initializers.zeros
ones: Init = jax.nn.initializers.ones


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=True)  # GPT-1/2/3 use the tanh approximation
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"model.activation={name!r} is not one of gelu, relu.")


ATTENTION_BLOCK = 64  # query rows per block in blocked_causal_attention (best of 32/64/128 on the CPU, docs/performance.md)


def blocked_causal_attention(
    q_BTNH: jax.Array, k_BTNH: jax.Array, v_BTNH: jax.Array, window: int = 0, block: int = ATTENTION_BLOCK
) -> jax.Array:
    """Causal softmax(Q K^T / sqrt(d_head)) V, the math of jax.nn.dot_product_attention(is_causal=True) (scores
    and softmax in float32, probabilities cast to the value dtype), for the CPU: each block of `block` queries
    meets only the keys up to its last row (and, with window > 0, none before its band), so the masked upper
    triangle is never computed (5/8 of the full T x T work at T = 4 blocks), and the batched matmuls run
    heads-major on contiguous blocks. About 2x less CPU time than the full-matrix kernel at T = 256."""
    B, T, N, H = q_BTNH.shape
    scale = 1.0 / math.sqrt(H)
    q_BNTH, k_BNTH, v_BNTH = (jnp.swapaxes(t, 1, 2) for t in (q_BTNH, k_BTNH, v_BTNH))
    outs = []
    for start in range(0, T, block):
        end = min(start + block, T)
        k0 = max(0, start - window + 1) if window > 0 else 0
        s_BNQK = jnp.einsum(
            "BNQH,BNKH->BNQK", q_BNTH[:, :, start:end], k_BNTH[:, :, k0:end], preferred_element_type=jnp.float32
        )
        q_pos_Q1 = jnp.arange(start, end)[:, None]
        k_pos_1K = jnp.arange(k0, end)[None, :]
        mask_QK = k_pos_1K <= q_pos_Q1
        if window > 0:
            mask_QK = mask_QK & (k_pos_1K > q_pos_Q1 - window)
        s_BNQK = jnp.where(mask_QK, s_BNQK * scale, jnp.finfo(jnp.float32).min)
        p_BNQK = jax.nn.softmax(s_BNQK, axis=-1).astype(v_BTNH.dtype)
        outs.append(jnp.einsum("BNQK,BNKH->BNQH", p_BNQK, v_BNTH[:, :, k0:end]))
    return jnp.swapaxes(jnp.concatenate(outs, axis=2) if len(outs) > 1 else outs[0], 1, 2)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype, compute_dtype):
        self.scale = param(None, ones, (dim,), ("norm",), param_dtype)
        self.bias = param(None, zeros, (dim,), ("norm",), param_dtype)
        self.eps = eps
        self.compute_dtype = compute_dtype

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        x = x_BTD.astype(jnp.float32)  # statistics in float32 whatever the compute dtype
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.compute_dtype)


class Attention(nnx.Module):
    """Multi-head causal self-attention; `window` > 0 makes it locally banded (GPT-3 sparse)."""

    def __init__(self, cfg: ModelConfig, *, window: int, residual_std: float, rngs: nnx.Rngs):
        D, N, H = cfg.d_model, cfg.n_head, d_head(cfg)
        pd = jnp.dtype(cfg.param_dtype)
        k_qkv, k_out = jax.random.split(rngs.params())
        # One fused kernel for q, k, v (like GPT-2's c_attn, reshaped so heads are their own axis).
        self.qkv_kernel = param(k_qkv, normal(cfg.init_std), (D, 3, N, H), ("embed", None, "heads", "head_dim"), pd)
        self.qkv_bias = param(None, zeros, (3, N, H), (None, "heads", "head_dim"), pd)
        self.out_kernel = param(k_out, normal(residual_std), (N, H, D), ("heads", "head_dim", "embed"), pd)
        self.out_bias = param(None, zeros, (D,), ("embed",), pd)
        self.window = window
        self.impl = None if resolve_attention_impl(cfg) == "xla" else "cudnn"  # warns once on a fallback
        # On the CPU the XLA kernel materialises the whole T x T score matrix: use the blocked one there.
        self.blocked = self.impl is None and jax.default_backend() == "cpu"
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        cd = self.compute_dtype
        qkv_BTCNH = jnp.einsum("BTD,DCNH->BTCNH", x_BTD.astype(cd), self.qkv_kernel[...].astype(cd))
        qkv_BTCNH = qkv_BTCNH + self.qkv_bias[...].astype(cd)
        # split, not three index ops: its gradient is one concatenate rather than three pads and adds
        q_BTNH, k_BTNH, v_BTNH = (t[:, :, 0] for t in jnp.split(qkv_BTCNH, 3, axis=2))
        names = ("batch", "length", "heads", "head_dim")
        q_BTNH, k_BTNH, v_BTNH = (constrain(t, names) for t in (q_BTNH, k_BTNH, v_BTNH))
        # softmax(Q K^T / sqrt(d_head)) V with a causal mask; the softmax runs in float32.
        if self.blocked:
            o_BTNH = blocked_causal_attention(q_BTNH, k_BTNH, v_BTNH, self.window)
        else:
            o_BTNH = jax.nn.dot_product_attention(
                q_BTNH,
                k_BTNH,
                v_BTNH,
                is_causal=True,
                local_window_size=(self.window - 1, 0) if self.window > 0 else None,
                implementation=self.impl,
            )
        o_BTNH = constrain(o_BTNH, names)
        y_BTD = jnp.einsum("BTNH,NHD->BTD", o_BTNH, self.out_kernel[...].astype(cd))
        return y_BTD + self.out_bias[...].astype(cd)

    def decode(
        self, x_BTD: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array, pos: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """KV-cache attention (sampling): the T new tokens at positions pos..pos+T-1 write their keys and
        values into the fixed-size cache [B, S, N, H] and attend to every cached position up to their own
        (and within the band for a local layer). Same parameters and math as __call__; always XLA."""
        cd = self.compute_dtype
        qkv_BTCNH = jnp.einsum("BTD,DCNH->BTCNH", x_BTD.astype(cd), self.qkv_kernel[...].astype(cd))
        qkv_BTCNH = qkv_BTCNH + self.qkv_bias[...].astype(cd)
        q_BTNH, k_BTNH, v_BTNH = (qkv_BTCNH[:, :, i] for i in range(3))
        k_BSNH = jax.lax.dynamic_update_slice_in_dim(k_BSNH, k_BTNH.astype(k_BSNH.dtype), pos, axis=1)
        v_BSNH = jax.lax.dynamic_update_slice_in_dim(v_BSNH, v_BTNH.astype(v_BSNH.dtype), pos, axis=1)
        q_pos_T1 = pos + jnp.arange(q_BTNH.shape[1])[:, None]
        k_pos_1S = jnp.arange(k_BSNH.shape[1])[None, :]
        mask_TS = k_pos_1S <= q_pos_T1  # causal; cache slots past the newest token are never read
        if self.window > 0:
            mask_TS = mask_TS & (k_pos_1S > q_pos_T1 - self.window)
        o_BTNH = jax.nn.dot_product_attention(
            q_BTNH, k_BSNH.astype(cd), v_BSNH.astype(cd), mask=mask_TS[None, None], implementation="xla"
        )
        y_BTD = jnp.einsum("BTNH,NHD->BTD", o_BTNH, self.out_kernel[...].astype(cd))
        return y_BTD + self.out_bias[...].astype(cd), k_BSNH, v_BSNH


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, residual_std: float, rngs: nnx.Rngs):
        D, F = cfg.d_model, d_ff(cfg)
        pd = jnp.dtype(cfg.param_dtype)
        k_in, k_out = jax.random.split(rngs.params())
        self.in_kernel = param(k_in, normal(cfg.init_std), (D, F), ("embed", "mlp"), pd)
        self.in_bias = param(None, zeros, (F,), ("mlp",), pd)
        self.out_kernel = param(k_out, normal(residual_std), (F, D), ("mlp", "embed"), pd)
        self.out_bias = param(None, zeros, (D,), ("embed",), pd)
        self.act = activation_fn(cfg.activation)
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        cd = self.compute_dtype
        h_BTF = x_BTD.astype(cd) @ self.in_kernel[...].astype(cd) + self.in_bias[...].astype(cd)
        h_BTF = constrain(self.act(h_BTF), ("batch", "length", "mlp"))
        return h_BTF @ self.out_kernel[...].astype(cd) + self.out_bias[...].astype(cd)


class Block(nnx.Module):
    """Transformer block: pre-LN (GPT-2/3) or post-LN (GPT-1), chosen by cfg.norm."""

    def __init__(self, cfg: ModelConfig, *, local: bool, rngs: nnx.Rngs):
        std = cfg.init_std / math.sqrt(2 * cfg.n_layer) if cfg.scaled_residual_init else cfg.init_std
        ln = dict(param_dtype=jnp.dtype(cfg.param_dtype), compute_dtype=jnp.dtype(cfg.compute_dtype))
        self.ln1 = LayerNorm(cfg.d_model, cfg.layer_norm_eps, **ln)
        self.attn = Attention(cfg, window=cfg.local_window if local else 0, residual_std=std, rngs=rngs)
        self.ln2 = LayerNorm(cfg.d_model, cfg.layer_norm_eps, **ln)
        self.mlp = MLP(cfg, residual_std=std, rngs=rngs)
        self.post_norm = cfg.norm == "post"

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        """x_BTD is the float32 residual stream; returns the same."""
        x_BTD = constrain(x_BTD, BTD)
        if self.post_norm:  # GPT-1: x = LN(x + attn(x)); x = LN(x + mlp(x))
            x_BTD = self.ln1(x_BTD + self.attn(x_BTD).astype(jnp.float32)).astype(jnp.float32)
            x_BTD = self.ln2(x_BTD + self.mlp(x_BTD).astype(jnp.float32)).astype(jnp.float32)
        else:
            x_BTD = x_BTD + self.attn(self.ln1(x_BTD)).astype(jnp.float32)
            x_BTD = x_BTD + self.mlp(self.ln2(x_BTD)).astype(jnp.float32)
        return constrain(x_BTD, BTD)

    def decode(
        self, x_BTD: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array, pos: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """__call__ with KV-cache attention (see Attention.decode); returns (x, k cache, v cache)."""
        if self.post_norm:
            a_BTD, k_BSNH, v_BSNH = self.attn.decode(x_BTD, k_BSNH, v_BSNH, pos)
            x_BTD = self.ln1(x_BTD + a_BTD.astype(jnp.float32)).astype(jnp.float32)
            x_BTD = self.ln2(x_BTD + self.mlp(x_BTD).astype(jnp.float32)).astype(jnp.float32)
        else:
            a_BTD, k_BSNH, v_BSNH = self.attn.decode(self.ln1(x_BTD), k_BSNH, v_BSNH, pos)
            x_BTD = x_BTD + a_BTD.astype(jnp.float32)
            x_BTD = x_BTD + self.mlp(self.ln2(x_BTD)).astype(jnp.float32)
        return x_BTD, k_BSNH, v_BSNH
