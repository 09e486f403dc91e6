"""Flax NNX GPT family (GPT-1, GPT-2, GPT-3, nano sizes): one code path, variants by config.

    gpt = GPT(cfg.model, kernels=kernels, rngs=nnx.Rngs(seed))   # kernels: research/ops/select.py
    logits_BTV = gpt(tokens_BT)            # float32, exactly vocab_size columns

Config fields pick the variant: `norm` (post = GPT-1, pre = GPT-2/3), `final_norm`,
`tied_embeddings`, `scaled_residual_init`, `attention` (dense | alternating: odd layers use a
locally banded causal mask of `local_window` tokens, GPT-3's sparse option), `param_dtype` /
`compute_dtype`, `remat` and `scan_layers` (stacked layers with a leading 'layers' axis, applied
with nnx.scan; outputs equal the plain loop's). `kernels` (default: XLA's, on any platform) says
which attention kernel runs; the run chooses them once for its platform.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from research.config.derived import is_local_layer, layer_period, padded_vocab
from research.config.schema import ModelConfig
from research.model.layers import BTD, Block, LayerNorm
from research.model.params import normal, param
from research.ops.matmul import dense
from research.ops.select import PORTABLE, Kernels
from research.parallel.rules import constrain

# Logical names are pure metadata; research/parallel/rules.py maps them to mesh axes at jit time.
nnx.use_eager_sharding(False)

REMAT_POLICIES: dict[str, Any] = {
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block in the backward pass
}


class LayerGroup(nnx.Module):
    """`layer_period` consecutive blocks: the unit that scan_layers stacks along 'layers'."""

    def __init__(self, cfg: ModelConfig, *, kernels: Kernels, rngs: nnx.Rngs):
        self.blocks = nnx.List(
            [Block(cfg, kernels=kernels, local=is_local_layer(cfg, p), rngs=rngs) for p in range(layer_period(cfg))]
        )

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        for block in self.blocks:
            x_BTD = block(x_BTD)
        return x_BTD


def _apply(module: nnx.Module, x_BTD: jax.Array) -> jax.Array:
    return module(x_BTD)


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, kernels: Kernels = PORTABLE, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        # Plain Python attributes only (cfg may be an OmegaConf node, which is not static-friendly).
        self.vocab_size = int(cfg.vocab_size)
        self.seq_len = int(cfg.seq_len)
        self.remat = str(cfg.remat)
        self.scan_layers = bool(cfg.scan_layers)
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)
        k_wte, k_wpe, k_head = jax.random.split(rngs.params(), 3)
        self.wte = param(k_wte, normal(cfg.init_std), (padded_vocab(cfg), cfg.d_model), ("vocab", "embed"), pd)
        self.wpe = param(k_wpe, normal(cfg.init_std), (cfg.seq_len, cfg.d_model), ("length", "embed"), pd)
        if cfg.scan_layers:
            period = layer_period(cfg)
            if cfg.n_layer % period:
                raise ValueError(
                    f"model.scan_layers=true with model.attention=alternating needs an even model.n_layer "
                    f"(got {cfg.n_layer}); use an even depth or model.scan_layers=false."
                )

            @nnx.split_rngs(splits=cfg.n_layer // period)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_layers(r: nnx.Rngs) -> LayerGroup:
                return LayerGroup(cfg, kernels=kernels, rngs=r)

            self.layers = make_layers(rngs)
        else:
            self.blocks = nnx.List(
                [Block(cfg, kernels=kernels, local=is_local_layer(cfg, i), rngs=rngs) for i in range(cfg.n_layer)]
            )
        ln = dict(param_dtype=pd, compute_dtype=self.compute_dtype)
        self.ln_f = LayerNorm(cfg.d_model, cfg.layer_norm_eps, **ln) if cfg.final_norm else None
        self.head = (
            None
            if cfg.tied_embeddings
            else param(k_head, normal(cfg.init_std), (cfg.d_model, padded_vocab(cfg)), ("embed", "vocab"), pd)
        )

    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        T = tokens_BT.shape[1]
        if T > self.seq_len:
            raise ValueError(f"input length {T} is above model.seq_len={self.seq_len}; shorten the window.")
        x_BTD = jnp.take(self.wte[...], tokens_BT, axis=0).astype(jnp.float32)
        x_BTD = constrain(x_BTD + self.wpe[...][:T].astype(jnp.float32), BTD)

        apply = _apply if self.remat == "none" else nnx.remat(_apply, policy=REMAT_POLICIES[self.remat])
        if self.scan_layers:

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def run_layers(x: jax.Array, group: LayerGroup) -> jax.Array:
                return apply(group, x)

            x_BTD = run_layers(x_BTD, self.layers)
        else:
            for block in self.blocks:
                x_BTD = apply(block, x_BTD)

        x_BTD = self.ln_f(x_BTD) if self.ln_f is not None else x_BTD
        logits_BTV = self.logits(x_BTD)[..., : self.vocab_size]  # drop vocab padding columns
        return constrain(logits_BTV, ("batch", "length", "vocab"))

    def logits(self, x_BTD: jax.Array) -> jax.Array:
        """Float32 logits over the padded vocabulary: x @ wte^T when tied, else x @ head."""
        if self.head is None:
            return dense(x_BTD, self.wte[...], self.compute_dtype, transposed=True)
        return dense(x_BTD, self.head[...], self.compute_dtype)

    # -- KV-cache decoding (research/sampling.py); the training forward above does not use these --------

    def init_cache(self, batch_size: int, dtype: Any = None) -> Any:
        """Empty key/value cache for `batch_size` sequences of up to model.seq_len tokens (compute dtype):
        a list of per-layer {k, v} [B, S, N, H] arrays, or stacked [groups, period, B, S, N, H] arrays
        for scan_layers models."""
        dtype = jnp.dtype(dtype or self.compute_dtype)
        if self.scan_layers:
            groups, _, _, n_head, d_head = self.layers.blocks[0].attn.qkv_kernel.shape
            shape = (groups, len(self.layers.blocks), batch_size, self.seq_len, n_head, d_head)
            return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        _, _, n_head, d_head = self.blocks[0].attn.qkv_kernel.shape
        shape = (batch_size, self.seq_len, n_head, d_head)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in self.blocks]

    def decode(self, tokens_BT: jax.Array, cache: Any, pos: jax.Array) -> tuple[jax.Array, Any]:
        """Logits [B, T, V] for tokens at positions pos..pos+T-1 given the cache of positions < pos, and
        the cache with these T positions written. T = the prompt length for a prefill, 1 per new token.
        Equals __call__ on the whole prefix (tests/test_sample.py); pos + T must not exceed model.seq_len."""
        T = tokens_BT.shape[1]
        x_BTD = jnp.take(self.wte[...], tokens_BT, axis=0).astype(jnp.float32)
        x_BTD = x_BTD + jax.lax.dynamic_slice_in_dim(self.wpe[...], pos, T, axis=0).astype(jnp.float32)
        if self.scan_layers:

            @nnx.scan(
                in_axes=(nnx.Carry, 0, 0, 0, None),
                out_axes=(nnx.Carry, 0, 0),
                transform_metadata={nnx.PARTITION_NAME: "layers"},
            )
            def run_layers(x: jax.Array, group: LayerGroup, k_P: jax.Array, v_P: jax.Array, pos: jax.Array):
                ks, vs = [], []
                for p, block in enumerate(group.blocks):
                    x, k, v = block.decode(x, k_P[p], v_P[p], pos)
                    ks.append(k)
                    vs.append(v)
                return x, jnp.stack(ks), jnp.stack(vs)

            x_BTD, k, v = run_layers(x_BTD, self.layers, cache["k"], cache["v"], pos)
            cache = {"k": k, "v": v}
        else:
            new_cache = []
            for block, layer_cache in zip(self.blocks, cache, strict=True):
                x_BTD, k, v = block.decode(x_BTD, layer_cache["k"], layer_cache["v"], pos)
                new_cache.append({"k": k, "v": v})
            cache = new_cache
        x_BTD = self.ln_f(x_BTD) if self.ln_f is not None else x_BTD
        return self.logits(x_BTD)[..., : self.vocab_size], cache


def abstract_model(cfg: ModelConfig, seed: int = 0, kernels: Kernels = PORTABLE) -> GPT:
    """Shape-only model (no memory, no FLOPs): for counting and sharding big configs."""
    return nnx.eval_shape(lambda: GPT(cfg, kernels=kernels, rngs=nnx.Rngs(seed)))
