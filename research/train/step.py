"""The jitted train and eval steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from research.parallel.rules import keep_context
from research.train import guards
from research.train.guards import GuardConfig
from research.train.state import TrainState

# (params, tokens [B, T + 1]) -> (mean loss, gradients): one (micro)batch's forward and backward pass
GradFn = Callable[[nnx.State, jax.Array], tuple[jax.Array, Any]]


def token_losses(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT1: jax.Array) -> jax.Array:
    """Next-token cross-entropy per position, float32, shape [B, T]."""
    model = nnx.merge(graphdef, params)
    logits_BTV = model(tokens_BT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), tokens_BT1[:, 1:])


def loss_and_grads(graphdef: nnx.GraphDef) -> GradFn:
    def loss_fn(params: nnx.State, tokens: jax.Array) -> jax.Array:
        return token_losses(graphdef, params, tokens).mean()

    return jax.value_and_grad(loss_fn)


def strided_split(tokens_BT1: jax.Array, parts: int) -> jax.Array:
    """[parts, B / parts, T + 1]: part i takes rows i, i + parts, ... so that every device keeps its own rows
    in every part (a contiguous split would put each part on a few devices and all-gather it)."""
    return tokens_BT1.reshape(-1, parts, tokens_BT1.shape[-1]).swapaxes(0, 1)


def accumulated(grad_fn: GradFn, params: nnx.State, tokens_BT1: jax.Array, microbatches: int):
    """Gradient accumulation inside the step: the mean loss and gradient of `microbatches` equal parts."""
    if microbatches == 1:
        return grad_fn(params, tokens_BT1)

    def accumulate(carry, tokens):
        loss_sum, grad_sum = carry
        loss, grads = grad_fn(params, tokens)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = (jnp.zeros((), jnp.float32), zeros)
    (loss_sum, grad_sum), _ = jax.lax.scan(accumulate, carry, strided_split(tokens_BT1, microbatches))
    return loss_sum / microbatches, jax.tree.map(lambda g: g / microbatches, grad_sum)


def make_train_step(
    grad_fn: GradFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    *,
    microbatches: int = 1,
    guard: GuardConfig | None = None,
    poison: bool = False,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """train_step(state, tokens) -> (state, metrics). A bad step (non-finite or spiking loss, see
    guards.py) leaves parameters and optimizer state unchanged; the step counter always advances.
    With poison=True (test hook) the step takes a third argument, a float32 scale applied to the
    loss and gradients (NaN, Inf or 100 to inject a bad step; 1 otherwise)."""
    guard = guard or GuardConfig()

    @keep_context
    def train_step(state: TrainState, tokens_BT1: jax.Array, scale: jax.Array | None = None):
        loss, grads = accumulated(grad_fn, state.params, tokens_BT1, microbatches)
        if scale is not None:
            loss, grads = loss * scale, jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok, guard_state = guards.guard_step(state.guard, state.step + 1, loss, grad_norm, guard)
        new_state = state.replace(
            step=state.step + 1,
            params=guards.select(ok, params, state.params),
            opt_state=guards.select(ok, opt_state, state.opt_state),
            guard=guard_state,
        )
        # the optimizer's schedule counts applied updates only (skipped ones leave its count alone)
        lr = schedule(state.step - state.guard.skipped)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, **guards.guard_metrics(guard_state)}
        return new_state, metrics

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, replicated) if poison else (state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(
    graphdef: nnx.GraphDef, params_shardings: Any, batch_sharding: NamedSharding
) -> Callable[[nnx.State, jax.Array], jax.Array]:
    """Mean loss per sequence, shape [B] (the spread across sequences gives the standard error)."""

    @keep_context
    def eval_step(params: nnx.State, tokens_BT1: jax.Array) -> jax.Array:
        return token_losses(graphdef, params, tokens_BT1).mean(axis=-1)

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding), out_shardings=replicated)
