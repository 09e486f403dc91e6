"""research/matmul.py: the mixed-precision dense layer's values, gradients, and the precision of its matmuls."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops.matmul import dense

# (x shape, w shape, contract, transposed, reference einsum): a plain layer, the tied head, the fused qkv
# kernel [D, 3, N, H] and the output projection [N, H, D], with their axes kept as they are sharded.
CASES = {
    "plain": ((2, 8, 16), (16, 24), 1, False, "btk,kn->btn"),
    "tied": ((2, 8, 16), (24, 16), 1, True, "btk,nk->btn"),
    "qkv": ((2, 8, 16), (16, 3, 2, 4), 1, False, "btd,dcnh->btcnh"),
    "out": ((2, 8, 2, 4), (2, 4, 16), 2, False, "btnh,nhd->btd"),
}


def _inputs(case: str):
    x_shape, w_shape, contract, transposed, spec = CASES[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) * 0.2, jnp.float32)
    y_shape = jax.eval_shape(lambda x, w: jnp.einsum(spec, x, w), x, w).shape
    g = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
    return x, w, g, dict(contract=contract, transposed=transposed), spec


def _reference(x, w, spec):
    return jnp.einsum(spec, x, w, precision="highest")


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_is_the_plain_product(case):
    x, w, g, kw, spec = _inputs(case)
    y = dense(x, w, jnp.float32, **kw)
    np.testing.assert_allclose(y, _reference(x, w, spec), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda x, w: (dense(x, w, jnp.float32, **kw) * g).sum(), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: (_reference(x, w, spec) * g).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(grads, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bfloat16_values_and_gradients_match_float32(case):
    x, w, g, kw, spec = _inputs(case)
    y = dense(x, w, jnp.bfloat16, **kw)
    assert y.dtype == jnp.float32  # accumulated and returned in float32
    np.testing.assert_allclose(y, _reference(x, w, spec), rtol=3e-2, atol=3e-2)
    grads = jax.grad(lambda x, w: (dense(x, w, jnp.bfloat16, **kw) * g).sum(), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: (_reference(x, w, spec) * g).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(grads, ref, strict=True):
        assert a.dtype == b.dtype == jnp.float32  # gradients arrive in the dtype of the inputs
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bfloat16_backward_matmuls_take_bfloat16_inputs(case):
    """All three matmuls of a training step (forward, dx, dw) read bf16 operands and accumulate in float32;
    plain autodiff would hand the two backward ones a float32 cotangent and run them in float32."""
    x, w, g, kw, _ = _inputs(case)
    loss = lambda x, w: (dense(x, w, jnp.bfloat16, **kw) * g).sum()  # noqa: E731
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
