"""GPT building blocks in Flax NNX: LayerNorm, causal self-attention, MLP, transformer block.

Parameters live in `param_dtype`; matmuls run in `compute_dtype`; LayerNorm statistics and the
attention softmax run in float32. The residual stream itself is kept in float32 (as PyTorch autocast
does for nanoGPT), so bf16 only touches the matmul inputs and the activations saved between them.
Which attention kernel runs, and whether the residual gradient is materialised, comes from `kernels`
(research/ops/select.py): nothing here asks what hardware it runs on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from research.config.derived import d_ff, d_head
from research.config.schema import ModelConfig
from research.model.params import normal, ones, param, zeros
from research.ops.attention import attention, cached_attention
from research.ops.fusion import materialize_cotangent
from research.ops.matmul import dense
from research.ops.select import Kernels
from research.parallel.rules import constrain

BTD = ("batch", "length", "embed")
BTNH = ("batch", "length", "heads", "head_dim")


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=True)  # GPT-1/2/3 use the tanh approximation
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"model.activation={name!r} is not one of gelu, relu.")


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

    def __init__(self, cfg: ModelConfig, *, kernels: Kernels, window: int, residual_std: float, rngs: nnx.Rngs):
        D, N, H = cfg.d_model, cfg.n_head, d_head(cfg)
        pd = jnp.dtype(cfg.param_dtype)
        k_qkv, k_out = jax.random.split(rngs.params())
        # One fused kernel for q, k, v (like GPT-2's c_attn, reshaped so heads are their own axis).
        self.qkv_kernel = param(k_qkv, normal(cfg.init_std), (D, 3, N, H), ("embed", None, "heads", "head_dim"), pd)
        self.qkv_bias = param(None, zeros, (3, N, H), (None, "heads", "head_dim"), pd)
        self.out_kernel = param(k_out, normal(residual_std), (N, H, D), ("heads", "head_dim", "embed"), pd)
        self.out_bias = param(None, zeros, (D,), ("embed",), pd)
        self.window = window
        self.kernels = kernels
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)

    def qkv(self, x_BTD: jax.Array) -> jax.Array:
        """[B, T, 3, N, H] in the compute dtype: q, k, v of every head from one fused matmul."""
        qkv_BTCNH = dense(x_BTD, self.qkv_kernel[...], self.compute_dtype) + self.qkv_bias[...].astype(jnp.float32)
        return qkv_BTCNH.astype(self.compute_dtype)

    def project(self, o_BTNH: jax.Array) -> jax.Array:
        """The output projection of the heads' outputs, float32 [B, T, D]."""
        y_BTD = dense(o_BTNH, self.out_kernel[...], self.compute_dtype, contract=2)
        return y_BTD + self.out_bias[...].astype(jnp.float32)

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        qkv_BTCNH = self.qkv(x_BTD)
        # split, not three index ops: its gradient is one concatenate rather than three pads and adds
        q_BTNH, k_BTNH, v_BTNH = (constrain(t[:, :, 0], BTNH) for t in jnp.split(qkv_BTCNH, 3, axis=2))
        o_BTNH = attention(q_BTNH, k_BTNH, v_BTNH, window=self.window, kernels=self.kernels)
        return self.project(constrain(o_BTNH, BTNH))

    def decode(
        self, x_BTD: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array, pos: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """KV-cache attention (sampling): the T new tokens at positions pos..pos+T-1 write their keys and
        values into the fixed-size cache [B, S, N, H] and attend to every cached position up to their own.
        Same parameters and math as __call__."""
        cd = self.compute_dtype
        qkv_BTCNH = self.qkv(x_BTD)
        q_BTNH, k_BTNH, v_BTNH = (qkv_BTCNH[:, :, i] for i in range(3))
        k_BSNH = jax.lax.dynamic_update_slice_in_dim(k_BSNH, k_BTNH.astype(k_BSNH.dtype), pos, axis=1)
        v_BSNH = jax.lax.dynamic_update_slice_in_dim(v_BSNH, v_BTNH.astype(v_BSNH.dtype), pos, axis=1)
        o_BTNH = cached_attention(q_BTNH, k_BSNH.astype(cd), v_BSNH.astype(cd), pos, window=self.window)
        return self.project(o_BTNH), k_BSNH, v_BSNH


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
        h_BTF = dense(x_BTD, self.in_kernel[...], cd) + self.in_bias[...].astype(jnp.float32)
        h_BTF = constrain(self.act(h_BTF).astype(cd), ("batch", "length", "mlp"))  # float32 math: native on CPUs
        return dense(h_BTF, self.out_kernel[...], cd) + self.out_bias[...].astype(jnp.float32)


class Block(nnx.Module):
    """Transformer block: pre-LN (GPT-2/3) or post-LN (GPT-1), chosen by cfg.norm."""

    def __init__(self, cfg: ModelConfig, *, kernels: Kernels, local: bool, rngs: nnx.Rngs):
        std = cfg.init_std / math.sqrt(2 * cfg.n_layer) if cfg.scaled_residual_init else cfg.init_std
        ln = dict(param_dtype=jnp.dtype(cfg.param_dtype), compute_dtype=jnp.dtype(cfg.compute_dtype))
        window = cfg.local_window if local else 0
        self.ln1 = LayerNorm(cfg.d_model, cfg.layer_norm_eps, **ln)
        self.attn = Attention(cfg, kernels=kernels, window=window, residual_std=std, rngs=rngs)
        self.ln2 = LayerNorm(cfg.d_model, cfg.layer_norm_eps, **ln)
        self.mlp = MLP(cfg, residual_std=std, rngs=rngs)
        self.post_norm = cfg.norm == "post"
        self.materialize_gradient = kernels.residual_barrier

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        """x_BTD is the float32 residual stream; returns the same."""
        x_BTD = constrain(x_BTD, BTD)
        if self.materialize_gradient:
            x_BTD = materialize_cotangent(x_BTD)
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
