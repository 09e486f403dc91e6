"""Quantities that follow from the config alone (pure functions; no JAX, no Hydra).

They take the typed dataclasses of research/config/schema.py or anything with the same attributes
(an OmegaConf node inside a resolver), so the sweep resolvers and the run compute them the same way.
"""

from __future__ import annotations

import math
from typing import Any


def d_head(model: Any) -> int:
    return model.d_head if model.d_head is not None else model.d_model // model.n_head


def d_ff(model: Any) -> int:
    return model.d_ff if model.d_ff is not None else 4 * model.d_model


def padded_vocab(model: Any) -> int:
    """Embedding rows as allocated: vocab_size rounded up to model.vocab_pad_multiple."""
    multiple = max(1, model.vocab_pad_multiple)
    return -(-model.vocab_size // multiple) * multiple


def layer_period(model: Any) -> int:
    """Layers per scanned group: 2 (dense, local) for alternating attention, else 1."""
    return 2 if model.attention == "alternating" else 1


def is_local_layer(model: Any, index: int) -> bool:
    return model.attention == "alternating" and index % 2 == 1


def train_seq_len(cfg: Any) -> int:
    return cfg.train.seq_len if cfg.train.seq_len is not None else cfg.model.seq_len


def batch_tokens(cfg: Any) -> int:
    return cfg.train.batch_size * train_seq_len(cfg)


def total_steps(cfg: Any, params_nonembed: int) -> int:
    """Steps from whichever budget is set (steps, tokens, or tokens_per_param x N); 0 when the budget is
    below one step."""
    train = cfg.train
    if train.steps is not None:
        return int(train.steps)
    tokens = train.tokens if train.tokens is not None else train.tokens_per_param * params_nonembed
    per_step = batch_tokens(cfg)
    return max(1, math.ceil(tokens / per_step)) if tokens >= per_step else 0


def warmup_steps(cfg: Any, steps: int) -> int:
    optim = cfg.optim
    if optim.warmup_steps is not None:
        return int(optim.warmup_steps)
    return int(round(optim.warmup_fraction * steps))
