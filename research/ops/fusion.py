"""Where XLA's CPU compiler has to be told to write an intermediate once instead of recomputing it.

XLA's CPU fusion copies chains of cheap elementwise ops into every consumer rather than writing the
chain's result to memory. In a transformer's backward pass the residual stream's gradient is such a
chain: every block adds its LayerNorm-backward terms to it, so without a break each consumer (the cast
for a matmul, a bias-gradient sum, the next LayerNorm backward) recomputes it from the top of the model:
fusions that grow with depth (docs/performance.md, section 10). A division counts as expensive and
is never duplicated, so the gradient divided by (1 + 0 * g), which is exact for finite values, is written
once (docs/performance.md, section 10). jax.lax.optimization_barrier cannot do this: the CPU pipeline
removes it before fusion.
"""

from __future__ import annotations

import jax


@jax.custom_vjp
def materialize_cotangent(x: jax.Array) -> jax.Array:
    """Identity; in the backward pass the incoming gradient is computed once and stored (CPU fusion)."""
    return x


def _fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return x, None


def _bwd(_, g: jax.Array) -> tuple[jax.Array]:
    # g / (1 + 0 * g) == g for every finite g (inf and NaN stay non-finite, for the bad-step guard);
    # the division is what XLA will not duplicate. 0 * g is not simplified away for floats.
    return (g / (1 + 0 * g),)


materialize_cotangent.defvjp(_fwd, _bwd)
