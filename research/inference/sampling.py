"""Text generation with a KV cache: temperature, top-k, top-p, a seed, streaming.

    gen = Generator(model)                                  # a GPT with its parameters
    for token in gen.generate(prompt_ids, max_new_tokens=200, temperature=0.8, top_k=200, seed=0):
        ...                                                 # one token id at a time, as it is sampled

The prompt is prefilled in one jitted call (padded to a power of two, so few prompt lengths
compile); each new token is then one jitted single-position step against a fixed-size cache of
the model's context (GPT.decode), so it costs one position, not the whole prefix. The random key
of the token at index i of the sequence is fold_in(key(seed), i): the same seed gives the same
text, and `generate_full` (no cache, the whole window recomputed per token) gives the same tokens.

Past the context: when the window is full, it restarts from the newest seq_len // 2 tokens (one
prefill), so generation continues with at least half a context of history; both paths apply the
same rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def filter_logits(logits_BV: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Temperature, then top-k (0 = off), then nucleus top-p (1 = off): logits outside the kept set -> -inf.

    All three are traced scalars, so changing them does not recompile. Ties at a cut-off are kept."""
    logits_BV = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    V = logits_BV.shape[-1]
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_B1 = jnp.take_along_axis(sorted_BV, jnp.broadcast_to(k - 1, (logits_BV.shape[0], 1)), axis=-1)
    # nucleus: keep the smallest prefix of the top-k-filtered, sorted distribution whose mass reaches top_p
    sorted_BV = jnp.where(sorted_BV >= kth_B1, sorted_BV, -jnp.inf)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_BV = ((mass_before_BV < top_p) | (top_p >= 1.0)) & (sorted_BV > -jnp.inf)  # top_p=1: exactly off
    keep_BV = keep_BV.at[:, 0].set(True)  # the most likely token always survives
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV >= jnp.maximum(cutoff_B1, kth_B1), logits_BV, -jnp.inf)


def sample_token(
    key: jax.Array, logits_BV: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """One token id per row; temperature 0 = greedy (argmax of the raw logits)."""
    sampled = jax.random.categorical(key, filter_logits(logits_BV, temperature, top_k, top_p), axis=-1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits_BV, axis=-1)).astype(jnp.int32)


def _settings(temperature: float, top_k: int, top_p: float) -> tuple[np.float32, np.int32, np.float32]:
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy).")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 = off).")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must lie in (0, 1] (1 = off).")
    return np.float32(temperature), np.int32(top_k), np.float32(top_p)


def _prefill_length(n: int, context: int) -> int:
    """Prompt length rounded up to a power of two (at least 8), within the context: few compilations."""
    return min(context, max(8, 1 << (n - 1).bit_length()))


@partial(jax.jit, static_argnums=0)
def _empty_cache(graphdef: nnx.GraphDef, params: Any) -> Any:
    return nnx.merge(graphdef, params).init_cache(1)


@partial(jax.jit, static_argnums=0, donate_argnums=2)
def _prefill(graphdef, params, cache, tokens_1P, length, key, temperature, top_k, top_p):
    logits_1PV, cache = nnx.merge(graphdef, params).decode(tokens_1P, cache, jnp.int32(0))
    last_1V = jax.lax.dynamic_index_in_dim(logits_1PV, length - 1, axis=1, keepdims=False)
    return sample_token(key, last_1V, temperature, top_k, top_p), cache


@partial(jax.jit, static_argnums=0, donate_argnums=2)
def _step(graphdef, params, cache, token_1, pos, key, temperature, top_k, top_p):
    logits_11V, cache = nnx.merge(graphdef, params).decode(token_1[:, None], cache, pos)
    return sample_token(key, logits_11V[:, 0], temperature, top_k, top_p), cache


@partial(jax.jit, static_argnums=0)
def _full_next(graphdef, params, tokens_1S, length, key, temperature, top_k, top_p):
    """The no-cache reference: the whole (end-padded) window through the plain forward pass."""
    logits_1SV = nnx.merge(graphdef, params)(tokens_1S)
    last_1V = jax.lax.dynamic_index_in_dim(logits_1SV, length - 1, axis=1, keepdims=False)
    return sample_token(key, last_1V, temperature, top_k, top_p)


class Generator:
    """Prefill and single-token steps for one model (batch of one sequence). The jitted functions are
    module-level with the graph definition static, so models of one shape share their compilations."""

    def __init__(self, model: nnx.Module):
        self.graphdef, self.params = nnx.split(model)
        self.context = int(model.seq_len)
        self.vocab_size = int(model.vocab_size)

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_ids: Sequence[int] = (),
    ) -> Iterator[int]:
        """Yield up to max_new_tokens sampled ids, one at a time (stops after yielding a stop id)."""
        settings = _settings(temperature, top_k, top_p)
        if not prompt:
            raise ValueError("the prompt needs at least one token (e.g. the EOS id as a document start).")
        base_key = jax.random.key(seed)
        tokens = [int(t) for t in prompt]
        S = self.context
        start = _window_start(len(tokens), 0, S)
        cache, pos = None, 0
        for _ in range(max_new_tokens):
            key = jax.random.fold_in(base_key, len(tokens))
            new_start = _window_start(len(tokens), start, S)
            if cache is None or new_start != start:  # (re)fill the cache from the window
                start = new_start
                window = tokens[start:]
                P = _prefill_length(len(window), S)
                padded = np.zeros((1, P), np.int32)
                padded[0, : len(window)] = window  # slots past the window are overwritten before being read
                cache = _empty_cache(self.graphdef, self.params)
                nxt, cache = _prefill(self.graphdef, self.params, cache, padded, np.int32(len(window)), key, *settings)
                pos = len(window)
            else:
                last = np.asarray([tokens[-1]], np.int32)
                nxt, cache = _step(self.graphdef, self.params, cache, last, np.int32(pos - 1), key, *settings)
            token = int(nxt[0])
            tokens.append(token)
            pos += 1
            yield token
            if token in stop_ids:
                return


def _window_start(n_tokens: int, start: int, context: int) -> int:
    """Where the model's window begins before predicting token n_tokens: it slides by half a context
    once n_tokens - start would exceed the context."""
    if n_tokens - start > context:
        return n_tokens - context // 2
    return start


def generate_full(
    model: nnx.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Reference without a cache: the whole window is recomputed for every token (slow; for tests).
    The window is padded at the end to the context so one compilation serves every length (causal
    attention: padding after the last token changes nothing before it)."""
    settings = _settings(temperature, top_k, top_p)
    graphdef, params = nnx.split(model)
    S = int(model.seq_len)
    base_key = jax.random.key(seed)
    tokens = [int(t) for t in prompt]
    start = _window_start(len(tokens), 0, S)
    out: list[int] = []
    for _ in range(max_new_tokens):
        key = jax.random.fold_in(base_key, len(tokens))
        start = _window_start(len(tokens), start, S)
        window = np.zeros((1, S), np.int32)
        window[0, : len(tokens) - start] = tokens[start:]
        token = int(_full_next(graphdef, params, window, np.int32(len(tokens) - start), key, *settings)[0])
        tokens.append(token)
        out.append(token)
        if token in stop_ids:
            break
    return out
