"""A weighted mixture of sources as a deterministic, random-access sample order.

The sample stream is cut into blocks of BLOCK samples. Each block holds exactly round(w_s x BLOCK) samples
of source s (largest remainders), at positions shuffled by a generator seeded with (seed, seq_len, block),
so the mixture is exact to 1/BLOCK over every block, and sample k's source and its index within that
source follow from k alone: a resumed run, another host or another batch size sees the same stream.
Within a source, sample j is window perm_e[j mod W_s] of that source, perm_e seeded by (seed, seq_len,
source, epoch e = j div W_s): each source cycles through its own epochs.
"""

from __future__ import annotations

import threading

import numpy as np

from research.errors import ConfigError

BLOCK = 4096
_MIX = 0x6D6978  # "mix": keeps the block generators apart from the window permutations


def block_counts(weights: list[float], names: list[str]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    raw = w * BLOCK
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: BLOCK - counts.sum()]] += 1
    if (counts == 0).any():
        low = ", ".join(n for n, c in zip(names, counts, strict=True) if c == 0)
        raise ConfigError(
            f"data.sources: the weight of {low} is below 1/{BLOCK} of the mixture; raise it or drop the source."
        )
    return counts


class MixtureOrder:
    def __init__(self, weights: list[float], names: list[str], n_windows: list[int], seed: int, seq_len: int):
        self.counts = block_counts(weights, names)
        self.n_windows = np.asarray(n_windows, dtype=np.int64)
        self.seed, self.seq_len = int(seed), int(seq_len)
        self._lock = threading.Lock()
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels (source per position) and ranks (index among the block's samples of that source)."""
        with self._lock:
            hit = self._blocks.get(b)
            if hit is None:
                labels = np.repeat(np.arange(len(self.counts)), self.counts)
                np.random.default_rng([self.seed % 2**63, self.seq_len, _MIX, b]).shuffle(labels)
                ranks = np.empty(BLOCK, dtype=np.int64)
                for s in range(len(self.counts)):
                    where = labels == s
                    ranks[where] = np.arange(int(where.sum()))
                if len(self._blocks) >= 4:
                    self._blocks.pop(min(self._blocks))
                hit = self._blocks[b] = (labels, ranks)
            return hit

    def _perm(self, source: int, epoch: int) -> np.ndarray:
        with self._lock:
            key = (source, epoch)
            p = self._perms.get(key)
            if p is None:
                rng = np.random.default_rng([self.seed % 2**63, self.seq_len, source + 1, epoch])
                p = rng.permutation(int(self.n_windows[source]))
                if len(self._perms) >= 3 * len(self.counts):
                    self._perms.pop(next(iter(self._perms)))
                self._perms[key] = p
            return p

    def locate(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source and window index within that source of samples k."""
        block, pos = np.divmod(np.asarray(k, dtype=np.int64), BLOCK)
        source = np.empty_like(block)
        j = np.empty_like(block)
        for b in np.unique(block):
            sel = block == b
            labels, ranks = self._block(int(b))
            source[sel] = labels[pos[sel]]
            j[sel] = b * self.counts[source[sel]] + ranks[pos[sel]]
        window = np.empty_like(j)
        epoch, at = np.divmod(j, self.n_windows[source])
        for s, e in {(int(s), int(e)) for s, e in zip(source, epoch, strict=True)}:
            sel = (source == s) & (epoch == e)
            window[sel] = self._perm(s, e)[at[sel]]
        return source, window

    def samples_per_epoch(self, source: int, total_samples: int) -> float:
        """Passes over `source` that total_samples draws of the mixture take."""
        return total_samples * self.counts[source] / BLOCK / max(1, int(self.n_windows[source]))
