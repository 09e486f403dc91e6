"""Data pipeline: sources -> work units -> tokenizer -> token shards -> grain loader (docs/architecture.md).

ds = prepare(cfg.data)                       # cached under data/<name>-v<vocab>-<fp>/; resumable, parallel
it = train_loader(ds, seq_len=256, global_batch=16, seed=0)
batch = next(it)                             # int32 [16, 257]; inputs [:, :-1], targets [:, 1:]
state = it.get_state()                       # JSON; it.set_state(state) resumes exactly
val = val_batches(ds, seq_len=256, batch=16, n_batches=8)
bpb = ds.bits_per_byte(val_loss_nats)        # == bits_per_byte(loss, ds.bytes_per_token_val)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from research.data import documents as _documents
from research.data.builtin import BUILTINS
from research.data.dataset import Dataset, bits_per_byte, token_dtype
from research.data.loader import TokenLoader, val_window_sources, val_windows
from research.data.loader import epochs_needed as _epochs_needed
from research.data.prepare import prepare
from research.data.readers import BadRecords, plan_units, read_unit
from research.data.settings import dataset_dir, resolve_cache_dir
from research.data.sources import resolve_sources
from research.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "BUILTINS",
    "Dataset",
    "TokenLoader",
    "Tokenizer",
    "bits_per_byte",
    "dataset_dir",
    "epochs_needed",
    "iter_documents",
    "load_tokenizer",
    "prepare",
    "resolve_sources",
    "token_dtype",
    "train_loader",
    "train_tokenizer",
    "val_batch_sources",
    "val_batches",
]


def iter_documents(
    sources: Iterable[Any] | str,
    *,
    text_field: str = "text",
    chunk_chars: int = 8192,
    cache_dir: str | Path = "data",
    on_bad_record: str = "skip",
    unit_mb: int = 64,
    bad: BadRecords | None = None,
) -> Iterator[str]:
    """Every document of data.sources, streamed in the order preparation reads them (split not applied)."""
    resolved = resolve_sources(sources)
    raw_dir = resolve_cache_dir(cache_dir) / "raw"
    bad = bad if bad is not None else BadRecords(fail=on_bad_record == "fail")
    for unit in plan_units(resolved, int(unit_mb) << 20, raw_dir):
        yield from _documents.documents(read_unit(unit, resolved, text_field, raw_dir, bad), chunk_chars)


def train_loader(
    ds: Dataset,
    *,
    seq_len: int,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    total_tokens: int | None = None,
    num_threads: int = 1,
    prefetch: int = 4,
) -> TokenLoader:
    """Training batches for this process: int32 [global_batch / process_count, seq_len + 1].

    The sample order depends only on (seed, seq_len), the data and the mixture weights. Pass total_tokens
    (the run's budget) to get the repeat-data warning up front instead of when the epoch ends."""
    mixture = {}
    if ds.weights is not None:
        streams = [ds.train_tokens(i) for i in range(len(ds.source_names))]
        mixture = {"streams": streams, "weights": ds.weights, "names": ds.source_names}
    return TokenLoader(
        ds.train_tokens(),
        seq_len=seq_len,
        global_batch=global_batch,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        total_tokens=total_tokens,
        num_threads=num_threads,
        prefetch=prefetch,
        **mixture,
    )


def val_batches(
    ds: Dataset,
    *,
    seq_len: int,
    batch: int,
    n_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list:
    """A fixed, deterministic list of validation batches, int32 [batch / process_count, seq_len + 1]."""
    return val_windows(
        ds.val_tokens(),
        seq_len=seq_len,
        batch=batch,
        n_batches=n_batches,
        process_index=process_index,
        process_count=process_count,
    )


def val_batch_sources(ds: Dataset, *, seq_len: int, batch: int, n_batches: int) -> list[np.ndarray]:
    """The source index of every row (all processes) of val_batches(...), for per-source validation loss."""
    return val_window_sources(
        ds.n_val_tokens, ds.val_source_starts(), seq_len=seq_len, batch=batch, n_batches=n_batches
    )


def epochs_needed(ds: Dataset, n_tokens: int, seq_len: int) -> float:
    """Passes over the train split that a budget of n_tokens takes (> 1 means repeated data)."""
    return _epochs_needed(n_tokens, ds.n_train_tokens, seq_len)
