"""Mixed-precision matmuls for the model: inputs in the compute dtype, float32 accumulation, and a
backward pass whose two matmuls also run in the compute dtype.

Plain autodiff of `einsum(x_bf16, w_bf16, preferred_element_type=float32)` hands the backward matmuls a
float32 cotangent next to a bf16 operand, so XLA runs both of them in float32: two thirds of the training
FLOPs at half the bf16 rate on a CPU with native bf16 dot products (AVX512-BF16 / AMX) and on GPUs alike.
Here the cotangent is cast to the compute dtype first, as mixed-precision training does everywhere
(PyTorch autocast, Megatron), and every matmul keeps one of the forms XLA's CPU library kernels (YNNPACK)
take in bf16: the contraction on the last axis of the left operand, or on two leading axes of both
(the weight gradient over batch and time). Measured in docs/performance.md.

With a float32 compute dtype these are plain einsums and autodiff is left alone.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

F32 = jnp.float32


def einsum_f32(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum with float32 accumulation and output, whatever the input dtype."""
    return jnp.einsum(spec, a, b, preferred_element_type=F32)


def _specs(x_ndim: int, w_ndim: int, contract: int, transposed: bool) -> tuple[str, str, str]:
    """einsum specs (forward, dx, dw) for x [B, T, *in] and w [*in, *out] (w [*out, *in] when transposed),
    contracting the `contract` axes of `in`. Weights keep their own axes (e.g. [D, 3, N, H]) so that a
    sharded axis is never merged with another one (which would make the partitioner all-gather it)."""
    k = "".join(chr(ord("a") + i) for i in range(contract))
    n = "".join(chr(ord("m") + i) for i in range(w_ndim - contract))
    assert x_ndim == 2 + contract, (x_ndim, contract)
    w = n + k if transposed else k + n
    return f"BT{k},{w}->BT{n}", f"BT{n},{w}->BT{k}", f"BT{k},BT{n}->{w}"


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dense(x: jax.Array, w: jax.Array, cd: jnp.dtype, specs: tuple[str, str, str], x_dtype, w_dtype) -> jax.Array:
    return _dense_fwd(x, w, cd, specs, x_dtype, w_dtype)[0]


def _dense_fwd(x, w, cd, specs, x_dtype, w_dtype):
    x_c, w_c = x.astype(cd), w.astype(cd)  # the residuals: compute-dtype copies (half the memory)
    return einsum_f32(specs[0], x_c, w_c), (x_c, w_c)


def _dense_bwd(cd, specs, x_dtype, w_dtype, residuals, g):
    x_c, w_c = residuals
    g_c = g.astype(cd)
    dx = einsum_f32(specs[1], g_c, w_c)
    dw = einsum_f32(specs[2], x_c, g_c)  # contracts batch and time: XLA makes it one transpose + a fast matmul
    return dx.astype(x_dtype), dw.astype(w_dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense(x: jax.Array, w: jax.Array, compute_dtype, *, contract: int = 1, transposed: bool = False) -> jax.Array:
    """x [B, T, *in] times w [*in, *out] over the `contract` axes of `in` (w [*out, *in] with transposed=True,
    the tied output head), float32 out [B, T, *out]. Inputs are cast to `compute_dtype`; the products
    accumulate in float32."""
    cd = jnp.dtype(compute_dtype)
    specs = _specs(x.ndim, w.ndim, contract, transposed)
    if cd == F32:
        return einsum_f32(specs[0], x.astype(F32), w.astype(F32))
    return _dense(x, w, cd, specs, jnp.dtype(x.dtype), jnp.dtype(w.dtype))
