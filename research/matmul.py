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


def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=F32)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dense(x_BTK: jax.Array, w: jax.Array, cd: jnp.dtype, transposed: bool, x_dtype, w_dtype) -> jax.Array:
    return _dense_fwd(x_BTK, w, cd, transposed, x_dtype, w_dtype)[0]


def _dense_fwd(x_BTK, w, cd, transposed, x_dtype, w_dtype):
    x_c, w_c = x_BTK.astype(cd), w.astype(cd)  # the residuals: compute-dtype copies (half the memory)
    y_BTN = _einsum("BTK,NK->BTN" if transposed else "BTK,KN->BTN", x_c, w_c)
    return y_BTN, (x_c, w_c)


def _dense_bwd(cd, transposed, x_dtype, w_dtype, residuals, g_BTN):
    x_c, w_c = residuals
    g_c = g_BTN.astype(cd)
    dx_BTK = _einsum("BTN,NK->BTK" if transposed else "BTN,KN->BTK", g_c, w_c)
    dw = _einsum("BTN,BTK->NK", g_c, x_c) if transposed else _einsum("BTK,BTN->KN", x_c, g_c)
    return dx_BTK.astype(x_dtype), dw.astype(w_dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense(x_BTK: jax.Array, w: jax.Array, compute_dtype, *, transposed: bool = False) -> jax.Array:
    """x [B, T, K] times w [K, N] (or w [N, K] with transposed=True, the tied output head), float32 out.

    Inputs are cast to `compute_dtype`; the products accumulate in float32."""
    cd = jnp.dtype(compute_dtype)
    if cd == F32:
        return _einsum("BTK,NK->BTN" if transposed else "BTK,KN->BTN", x_BTK.astype(F32), w.astype(F32))
    return _dense(x_BTK, w, cd, transposed, jnp.dtype(x_BTK.dtype), jnp.dtype(w.dtype))
