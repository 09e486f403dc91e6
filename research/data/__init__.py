"""Data pipeline: sources -> documents -> SentencePiece BPE -> packed tokens -> grain loader.

ds = prepare(cfg.data)                       # cached under data/<name>-v<vocab>-<fp>/
it = train_loader(ds, seq_len=256, global_batch=16, seed=0)
batch = next(it)                             # int32 [16, 257]; inputs [:, :-1], targets [:, 1:]
state = it.get_state()                       # JSON; it.set_state(state) resumes exactly
val = val_batches(ds, seq_len=256, batch=16, n_batches=8)
bpb = ds.bits_per_byte(val_loss_nats)        # == bits_per_byte(loss, ds.bytes_per_token_val)
"""

from __future__ import annotations

from research.data.corpus import BUILTINS, load_corpus, load_documents
from research.data.loader import TokenLoader, val_windows
from research.data.loader import epochs_needed as _epochs_needed
from research.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from research.data.tokens import Dataset, bits_per_byte, dataset_dir, prepare

__all__ = [
    "BUILTINS",
    "Dataset",
    "TokenLoader",
    "Tokenizer",
    "bits_per_byte",
    "dataset_dir",
    "epochs_needed",
    "load_corpus",
    "load_documents",
    "load_tokenizer",
    "prepare",
    "train_loader",
    "train_tokenizer",
    "val_batches",
]


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

    The sample order depends only on (seed, seq_len) and the data. Pass total_tokens (the run's
    budget) to get the repeat-data warning up front instead of when the epoch ends."""
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


def epochs_needed(ds: Dataset, n_tokens: int, seq_len: int) -> float:
    """Passes over the train split that a budget of n_tokens takes (> 1 means repeated data)."""
    return _epochs_needed(n_tokens, ds.n_train_tokens, seq_len)
