"""The jitted train and eval steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from research import sharding
from research.train import guards
from research.train.guards import GuardConfig
from research.train.state import TrainState


def token_losses(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT1: jax.Array) -> jax.Array:
    """Next-token cross-entropy per position, float32, shape [B, T]."""
    model = nnx.merge(graphdef, params)
    logits_BTV = model(tokens_BT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), tokens_BT1[:, 1:])


# Streams (CPU, bf16 compute): each (micro)batch is split into independent sub-batches whose forward and
# backward passes are separate, unrolled subgraphs. XLA's CPU runtime then has independent ops to run on its
# two threads where one chain of small ops would leave a core waiting: nanogpt_bench_s 0.92x, _m 0.95x the
# step time with 4 streams. In float32, where the slower matmuls already fill both cores, the same split made
# those two steps 1.1x-1.25x slower (docs/performance.md), so automatic streams are for bf16 only. The update
# is the full batch's: the mean of equal-sized sub-batch means. Accelerators gain nothing from smaller
# kernels: one stream there.
STREAM_MIN_TOKENS = 1024  # per stream and device; below it the extra compile time buys nothing measurable
AUTO_STREAMS = (4, 2)  # tried in this order


def auto_streams(rows_per_device: int, seq_len: int, backend: str, compute_dtype: str) -> int:
    """Streams for train.streams=null: on the CPU with bf16 compute, the most of 4, 2 that split the rows each
    device holds (per microbatch) evenly into sub-batches of at least STREAM_MIN_TOKENS tokens; else 1."""
    if backend != "cpu" or jnp.dtype(compute_dtype) != jnp.bfloat16:
        return 1
    for streams in AUTO_STREAMS:
        if rows_per_device % streams == 0 and rows_per_device // streams * seq_len >= STREAM_MIN_TOKENS:
            return streams
    return 1


def resolve_streams(requested: int | None, rows_per_device: int, seq_len: int, compute_dtype: str) -> int:
    """train.streams as set, or auto_streams for this backend when it is null."""
    return requested or auto_streams(rows_per_device, seq_len, jax.default_backend(), compute_dtype)


def _strided_split(tokens_BT1: jax.Array, parts: int) -> jax.Array:
    """[parts, B / parts, T + 1]: part i takes rows i, i + parts, ... so that every device keeps its own rows
    in every part (a contiguous split would put each part on a few devices and all-gather it)."""
    return tokens_BT1.reshape(-1, parts, tokens_BT1.shape[-1]).swapaxes(0, 1)


def _loss_and_grads(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT1: jax.Array, microbatches: int, streams: int):
    def loss_fn(p: nnx.State, tokens: jax.Array) -> jax.Array:
        return token_losses(graphdef, p, tokens).mean()

    grad_fn = jax.value_and_grad(loss_fn)

    def batch_grads(tokens: jax.Array):
        if streams == 1:
            return grad_fn(params, tokens)
        parts = _strided_split(tokens, streams)
        outs = [grad_fn(params, parts[i]) for i in range(streams)]  # unrolled: independent subgraphs
        loss = sum(loss for loss, _ in outs) / streams
        return loss, jax.tree.map(lambda *g: sum(g) / streams, *(grads for _, grads in outs))

    if microbatches == 1:
        return batch_grads(tokens_BT1)
    tokens_MBT1 = _strided_split(tokens_BT1, microbatches)

    def accumulate(carry, tokens):
        loss_sum, grad_sum = carry
        loss, grads = batch_grads(tokens)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, grad_sum), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), tokens_MBT1)
    return loss_sum / microbatches, jax.tree.map(lambda g: g / microbatches, grad_sum)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    microbatches: int = 1,
    guard: GuardConfig | None = None,
    poison: bool = False,
    streams: int = 1,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """train_step(state, tokens) -> (state, metrics). A bad step (non-finite or spiking loss, see
    guards.py) leaves parameters and optimizer state unchanged; the step counter always advances.
    With poison=True (test hook) the step takes a third argument, a float32 scale applied to the
    loss and gradients (NaN, Inf or 100 to inject a bad step; 1 otherwise). `streams` splits each
    (micro)batch into that many independent sub-batches (see auto_streams); the update is the same."""
    guard = guard or GuardConfig()
    made_in = sharding.active()  # jit traces at the first call, maybe outside `activate`: constrain as made

    def train_step(state: TrainState, tokens_BT1: jax.Array, scale: jax.Array | None = None):
        with sharding.constraining(made_in):
            return _train_step(state, tokens_BT1, scale)

    def _train_step(state: TrainState, tokens_BT1: jax.Array, scale: jax.Array | None):
        loss, grads = _loss_and_grads(graphdef, state.params, tokens_BT1, microbatches, streams)
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

    made_in = sharding.active()

    def eval_step(params: nnx.State, tokens_BT1: jax.Array) -> jax.Array:
        with sharding.constraining(made_in):
            return token_losses(graphdef, params, tokens_BT1).mean(axis=-1)

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding), out_shardings=replicated)
