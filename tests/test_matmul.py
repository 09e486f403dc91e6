"""research/matmul.py: the mixed-precision dense layer's values, gradients, and the precision of its matmuls."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from research.matmul import dense


def _inputs(transposed: bool):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((24, 16) if transposed else (16, 24)) * 0.2, jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 8, 24)), jnp.float32)
    return x, w, g


def _reference(x, w, transposed):
    return jnp.einsum("btk,nk->btn" if transposed else "btk,kn->btn", x, w, precision="highest")


@pytest.mark.parametrize("transposed", [False, True])
def test_float32_is_the_plain_product(transposed):
    x, w, g = _inputs(transposed)
    y = dense(x, w, jnp.float32, transposed=transposed)
    np.testing.assert_allclose(y, _reference(x, w, transposed), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda x, w: (dense(x, w, jnp.float32, transposed=transposed) * g).sum(), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: (_reference(x, w, transposed) * g).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(grads, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_bfloat16_values_and_gradients_match_float32(transposed):
    x, w, g = _inputs(transposed)
    y = dense(x, w, jnp.bfloat16, transposed=transposed)
    assert y.dtype == jnp.float32  # accumulated and returned in float32
    np.testing.assert_allclose(y, _reference(x, w, transposed), rtol=3e-2, atol=3e-2)
    grads = jax.grad(lambda x, w: (dense(x, w, jnp.bfloat16, transposed=transposed) * g).sum(), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: (_reference(x, w, transposed) * g).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(grads, ref, strict=True):
        assert a.dtype == b.dtype == jnp.float32  # gradients arrive in the dtype of the inputs
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("transposed", [False, True])
def test_bfloat16_backward_matmuls_take_bfloat16_inputs(transposed):
    """All three matmuls of a training step (forward, dx, dw) read bf16 operands and accumulate in float32;
    plain autodiff would hand the two backward ones a float32 cotangent and run them in float32."""
    x, w, g = _inputs(transposed)
    loss = lambda x, w: (dense(x, w, jnp.bfloat16, transposed=transposed) * g).sum()  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)

    def dots(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from dots(sub)

    found = list(dots(jaxpr.jaxpr))
    assert len(found) == 3
    for eqn in found:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16], eqn
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn
