"""Streams (CPU, bf16 compute): each (micro)batch split into independent sub-batches whose forward and
backward passes are separate, unrolled subgraphs, so XLA's CPU runtime has independent ops to run on its
threads where one chain of small ops would leave a core waiting. The update is the full batch's: the
mean of equal-sized sub-batch means. In float32, where the slower matmuls already fill the cores, the
split measured slower, so automatic streams are for bf16 only; accelerators gain nothing from smaller
kernels (figures: docs/performance.md, "streams").

train/programs.py applies it from outside the step: `with_streams(grad_fn, n)` wraps the step's
gradient function when train.streams (or the automatic choice) is above 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.train.step import GradFn, strided_split

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


def resolve_streams(
    requested: int | None, rows_per_device: int, seq_len: int, platform: str, compute_dtype: str
) -> int:
    """train.streams as set, or auto_streams for this platform when it is null."""
    return requested or auto_streams(rows_per_device, seq_len, platform, compute_dtype)


def with_streams(grad_fn: GradFn, streams: int) -> GradFn:
    """grad_fn over `streams` strided parts of the batch, unrolled (independent subgraphs), averaged."""
    if streams == 1:
        return grad_fn

    def split_grads(params, tokens_BT1):
        parts = strided_split(tokens_BT1, streams)
        outs = [grad_fn(params, parts[i]) for i in range(streams)]
        loss = sum(loss for loss, _ in outs) / streams
        return loss, jax.tree.map(lambda *g: sum(g) / streams, *(grads for _, grads in outs))

    return split_grads
