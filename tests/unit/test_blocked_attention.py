"""research/ops/blocked_attention.py: the blocked CPU attention equals the reference in value and gradient, keeps bf16 dots, and saves probabilities only up to its length limit."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import blocked_attention as attention
from research.ops.blocked_attention import blocked_causal_attention


@pytest.mark.parametrize("save_probs", [True, False], ids=["saved-probs", "recomputed-probs"])
@pytest.mark.parametrize(
    "T,window,block,dtype",
    [
        (64, 0, 16, "float32"),
        (50, 0, 16, "float32"),
        (40, 7, 16, "float32"),
        (45, 7, 16, "float32"),
        (16, 0, 64, "float32"),
        (32, 0, 8, "bfloat16"),
    ],
)
def test_blocked_attention_equals_reference(T, window, block, dtype, save_probs):
    rng = np.random.default_rng(0)
    q, k, v, g = (jnp.asarray(rng.standard_normal((2, T, 3, 8)), dtype) for _ in range(4))
    local = (window - 1, 0) if window else None
    ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local)  # noqa: E731
    new = lambda q, k, v: blocked_causal_attention(q, k, v, window, block, save_probs)  # noqa: E731
    tol = 1e-5 if dtype == "float32" else 2e-2
    f32 = lambda x: np.asarray(x.astype(jnp.float32))  # noqa: E731
    np.testing.assert_allclose(f32(new(q, k, v)), f32(ref(q, k, v)), atol=tol, rtol=tol)
    grads = lambda f: jax.grad(lambda *a: (f(*a).astype(jnp.float32) * g).sum(), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    for a, b in zip(grads(new), grads(ref), strict=True):
        np.testing.assert_allclose(f32(a), f32(b), atol=10 * tol, rtol=10 * tol)


def _dot_operand_dtypes(hlo: str) -> list[tuple[str, str]]:
    """(lhs, rhs) element types of every dot in a compiled HLO module's text."""
    dtype = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    return [(dtype[a], dtype[b]) for a, b in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA's CPU compiler decides this")
@pytest.mark.parametrize("save_probs,backward_dots", [(True, 4), (False, 5)])
def test_bfloat16_attention_dots_stay_bfloat16_once_compiled(save_probs, backward_dots):
    """XLA's CPU compiler runs a bf16 dot in float32 when an operand is a bare transpose (its operand
    upcaster rejects the transposed layout): that was every dot of the last query block, the full-length
    one, at half the bf16 rate. The compiled forward and backward have only bf16 x bf16 dots."""
    q, k, v, g = (jnp.ones((2, 128, 4, 32), jnp.bfloat16) for _ in range(4))
    grads = lambda q, k, v: jax.grad(  # noqa: E731
        lambda *a: (blocked_causal_attention(*a, save_probs=save_probs).astype(jnp.float32) * g).sum(),
        argnums=(0, 1, 2),
    )(q, k, v)
    dots = _dot_operand_dtypes(jax.jit(grads).lower(q, k, v).compile().as_text())
    assert len(dots) == (2 + backward_dots) * 2  # two query blocks; saved probabilities skip the score dot
    assert set(dots) == {("bf16", "bf16")}, dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="counts dots in XLA's CPU compilation")
def test_attention_reuses_probabilities_only_up_to_the_length_limit(monkeypatch):
    """Saved probabilities cost 5/8 T^2 per sequence and head: past SAVE_PROBS_MAX_LEN the backward pass
    recomputes them (one more dot per query block) and memory stays linear in T."""
    monkeypatch.setattr(attention, "SAVE_PROBS_MAX_LEN", 64)

    def n_dots(T):
        q, k, v = (jnp.ones((1, T, 2, 8), jnp.float32) for _ in range(3))
        loss = lambda *a: blocked_causal_attention(*a, block=32).sum()  # noqa: E731
        return len(_dot_operand_dtypes(jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()))

    assert n_dots(64) == 2 * (2 + 4)  # two query blocks, probabilities saved
    assert n_dots(96) == 3 * (2 + 5)  # three blocks, recomputed
