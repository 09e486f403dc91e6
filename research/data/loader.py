"""Grain loader over packed tokens: fixed windows, deterministic order, resumable, host-sharded.

Training examples are windows of seq_len + 1 tokens starting at multiples of seq_len (inputs
are window[:-1], targets window[1:]), so an epoch covers every token once. Sample k of the
run is window perm_e[k mod W] with e = k div W, where W is the number of windows and perm_e a
permutation seeded by (seed, seq_len, e) only: every model of a sweep with the same seed and
seq_len sees the same sample stream whatever its size or batch size, and a run longer than
one epoch continues with a fresh order. Step s of a global batch B covers samples
[s*B, (s+1)*B); process p of P reads only rows [p*B/P, (p+1)*B/P) of it.

With mixture weights (`streams` and `weights`), sample k comes from the source and window that
research/data/mixture.py assigns it, again from k alone. The tokens may be a flat array or many shards
(research/data/sharded.py); the order does not depend on how they were sharded.

The step sequence is a grain MapDataset (random access, so a position is just a step index)
turned into a grain DatasetIterator, whose get_state/set_state give the resumable position.
"""

from __future__ import annotations

import logging
import threading

import grain
import numpy as np

from research.data.mixture import MixtureOrder
from research.data.sharded import windows
from research.errors import ConfigError

log = logging.getLogger("research.data")

_MAX_STEPS = 2**62


def n_windows(n_tokens: int, seq_len: int) -> int:
    """Number of training windows (seq_len + 1 tokens, stride seq_len) in n_tokens tokens."""
    return max(0, (int(n_tokens) - 1) // int(seq_len))


def epochs_needed(n_tokens_requested: int, n_train_tokens: int, seq_len: int) -> float:
    """How many passes over the train split a budget of n_tokens_requested (predicted) tokens
    takes; above 1.0 the run repeats data."""
    per_epoch = n_windows(n_train_tokens, seq_len) * seq_len
    return float("inf") if per_epoch == 0 else n_tokens_requested / per_epoch


def _epoch_permutation(seed: int, seq_len: int, epoch: int, n: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed) % 2**63, int(seq_len), int(epoch)])
    return rng.permutation(n)


class TokenLoader:
    """Iterator of int32 arrays [global_batch / process_count, seq_len + 1] for this process."""

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        seq_len: int,
        global_batch: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        total_tokens: int | None = None,
        num_threads: int = 1,
        prefetch: int = 4,
        streams: list | None = None,
        weights: list[float] | None = None,
        names: list[str] | None = None,
    ):
        if seq_len < 1:
            raise ConfigError(f"train.seq_len={seq_len} must be positive.")
        if global_batch < 1:
            raise ConfigError(f"train.batch_size={global_batch} must be positive.")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
        if global_batch % process_count:
            raise ConfigError(
                f"train.batch_size={global_batch} is not divisible by the {process_count} processes; "
                "make the global batch a multiple of the process count."
            )
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.local_batch = self.global_batch // self.process_count
        self.streams, self.names, self.weights = streams, names, weights
        self.mix = self._mixture(streams, weights, names) if weights is not None else None
        self.n_windows = n_windows(len(tokens), self.seq_len)
        if self.n_windows < 1:
            raise ConfigError(
                f"the train split has {len(tokens)} tokens, fewer than one window of train.seq_len + 1 = "
                f"{self.seq_len + 1}; add text to data.sources or lower train.seq_len."
            )
        self.tokens_per_epoch = self.n_windows * self.seq_len
        self._perm_lock = threading.Lock()
        self._perms: dict[int, np.ndarray] = {}
        self._offsets = np.arange(self.seq_len + 1)
        self._warned = False
        self._step = 0
        if total_tokens is not None and self._repeats(int(total_tokens)):
            self._warn_repeat(int(total_tokens))

        steps = grain.MapDataset.range(_MAX_STEPS).map(self._read_step)
        opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)
        self._it = iter(steps.to_iter_dataset(opts))

    def _mixture(self, streams, weights, names) -> MixtureOrder:
        if streams is None or len(streams) != len(weights):
            raise ValueError("a mixture needs one token stream per weight")
        names = names or [f"source {i}" for i in range(len(streams))]
        counts = [n_windows(len(t), self.seq_len) for t in streams]
        empty = [n for n, c in zip(names, counts, strict=True) if c < 1]
        if empty:
            raise ConfigError(
                f"data.sources: {', '.join(empty)} has fewer train tokens than one window of train.seq_len + 1 = "
                f"{self.seq_len + 1}; drop it from the mixture or add text to it."
            )
        return MixtureOrder(weights, names, counts, self.seed, self.seq_len)

    # -- order --------------------------------------------------------------------------------
    def _perm(self, epoch: int) -> np.ndarray:
        with self._perm_lock:
            p = self._perms.get(epoch)
            if p is None:
                p = _epoch_permutation(self.seed, self.seq_len, epoch, self.n_windows)
                if len(self._perms) >= 3:
                    self._perms.pop(min(self._perms))
                self._perms[epoch] = p
            return p

    def _samples(self, step: int, all_processes: bool) -> np.ndarray:
        start = step * self.global_batch
        if all_processes:
            return np.arange(start, start + self.global_batch, dtype=np.int64)
        lo = start + self.process_index * self.local_batch
        return np.arange(lo, lo + self.local_batch, dtype=np.int64)

    def sources_of(self, step: int, *, all_processes: bool = False) -> np.ndarray:
        """The source of each row of `step` (all 0 without a mixture)."""
        k = self._samples(step, all_processes)
        return self.mix.locate(k)[0] if self.mix is not None else np.zeros_like(k)

    def window_indices(self, step: int, *, all_processes: bool = False) -> np.ndarray:
        """Window indices of `step` (within each row's source for a mixture): this process's rows, or all."""
        k = self._samples(step, all_processes)
        if self.mix is not None:
            return self.mix.locate(k)[1]
        epoch, pos = np.divmod(k, self.n_windows)
        out = np.empty_like(k)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._perm(int(e))[pos[sel]]
        return out

    def _read_step(self, step: int) -> np.ndarray:
        if self.mix is None:
            return windows(self.tokens, self.window_indices(step) * self.seq_len, self.seq_len + 1)
        source, window = self.mix.locate(self._samples(step, all_processes=False))
        out = np.empty((len(source), self.seq_len + 1), dtype=np.int32)
        for s in np.unique(source):
            sel = source == s
            out[sel] = windows(self.streams[int(s)], window[sel] * self.seq_len, self.seq_len + 1)
        return out

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> TokenLoader:
        return self

    def _repeats(self, tokens: int) -> bool:
        if self.mix is None:
            return tokens > self.tokens_per_epoch
        return any(self.mix.samples_per_epoch(i, tokens // self.seq_len) > 1 for i in range(len(self.streams)))

    def __next__(self) -> np.ndarray:
        batch = next(self._it)
        self._step += 1
        seen = self._step * self.global_batch * self.seq_len
        if not self._warned and self._repeats(seen):
            self._warn_repeat(seen)
        return batch

    def _warn_repeat(self, requested: int) -> None:
        self._warned = True
        if self.mix is not None:
            samples = requested // self.seq_len
            for i, name in enumerate(self.names or []):
                passes = self.mix.samples_per_epoch(i, samples)
                if passes > 1:
                    log.warning(
                        "this run would repeat data of source %s: its weight takes %.2f passes over its train split; "
                        "lower its weight or the token budget, or add text to it",
                        name,
                        passes,
                    )
            return
        log.warning(
            "this run would repeat data: %s tokens requested but the train split has %s (%.2f epochs); "
            "add text to data.sources or lower the token budget",
            f"{requested:,}",
            f"{self.tokens_per_epoch:,}",
            requested / self.tokens_per_epoch,
        )

    def epochs_needed(self, n_tokens_requested: int) -> float:
        return n_tokens_requested / self.tokens_per_epoch

    @property
    def step(self) -> int:
        return self._step

    @property
    def epoch(self) -> float:
        """Passes over the train split completed so far (fractional)."""
        return self._step * self.global_batch / self.n_windows

    # -- position -----------------------------------------------------------------------------
    def get_state(self) -> dict:
        """JSON-serialisable position; set_state(get_state()) resumes exactly here."""
        return {
            "step": self._step,
            "grain": self._it.get_state(),
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch": self.global_batch,
            "n_windows": self.n_windows,
            "weights": None if self.weights is None else [float(w) for w in self.weights],
            "tokens_seen": self._step * self.global_batch * self.seq_len,
        }

    def set_state(self, state: dict) -> None:
        for key, setting in (
            ("seed", "train.seed"),
            ("seq_len", "train.seq_len"),
            ("global_batch", "train.batch_size"),
            ("n_windows", "the data"),
        ):
            if key in state and int(state[key]) != getattr(self, key):
                raise ConfigError(
                    f"the saved loader position was made with {key}={state[key]} but this run has "
                    f"{getattr(self, key)}; resume with the same {setting} or start a fresh run directory."
                )
        saved = state.get("weights")
        mine = None if self.weights is None else [float(w) for w in self.weights]
        differ = (saved is None) != (mine is None) or (saved is not None and not np.allclose(saved, mine))
        if "weights" in state and differ:
            raise ConfigError(
                f"the saved loader position was made with mixture weights {saved} but this run has {mine}; resume "
                "with the same data.sources weights or start a fresh run directory."
            )
        self._it.set_state(state["grain"])
        self._step = int(state["step"])
        self._warned = self._repeats(self._step * self.global_batch * self.seq_len)


def _val_window_index(n_tokens: int, seq_len: int, batch: int, n_batches: int, warn: bool) -> np.ndarray:
    """Indices of the validation windows: spread evenly over the split, whole batches only."""
    total = n_windows(n_tokens, seq_len)
    want = batch * n_batches
    if total < batch:
        raise ConfigError(
            f"the validation split has {n_tokens} tokens, fewer than one eval batch of {batch} windows of "
            f"{seq_len + 1}; raise data.val_fraction or lower train.batch_size / train.seq_len."
        )
    if total < want:
        if warn:
            log.warning(
                "validation split has %d windows of %d tokens; using %d of the %d batches requested",
                total,
                seq_len + 1,
                total // batch,
                n_batches,
            )
        want = (total // batch) * batch
    return np.linspace(0, total - 1, want).round().astype(np.int64)


def val_window_sources(
    n_tokens: int, source_starts: np.ndarray, *, seq_len: int, batch: int, n_batches: int
) -> list[np.ndarray]:
    """The source of every row (all processes) of each validation batch: the source its window starts in."""
    idx = _val_window_index(n_tokens, seq_len, batch, n_batches, warn=False)
    source = np.searchsorted(np.asarray(source_starts), idx * seq_len, side="right") - 1
    return [source[b * batch : (b + 1) * batch] for b in range(len(idx) // batch)]


def val_windows(
    tokens: np.ndarray,
    *,
    seq_len: int,
    batch: int,
    n_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[np.ndarray]:
    """A fixed list of validation batches, int32 [batch / process_count, seq_len + 1]: windows
    spread evenly over the validation split (in file order), the same on every call. With too
    few windows for n_batches, as many full batches as fit (a warning says so)."""
    if batch % process_count:
        raise ConfigError(f"the eval batch {batch} is not divisible by the {process_count} processes.")
    idx = _val_window_index(len(tokens), seq_len, batch, n_batches, warn=True)
    want = len(idx)
    rows = windows(tokens, idx * seq_len, seq_len + 1)
    local = batch // process_count
    lo = process_index * local
    return [rows[b * batch + lo : b * batch + lo + local] for b in range(want // batch)]
