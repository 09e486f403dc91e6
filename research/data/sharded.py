"""Many token shards read as one array: len(), integer-array indexing and windows, through memory maps.

The loader and the validation batches index this exactly like a flat array of tokens, so the order,
the resume position and the per-host rows do not depend on how the data was sharded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ShardedTokens:
    def __init__(self, paths: list[Path], sizes: list[int], dtype: np.dtype) -> None:
        keep = [(p, int(n)) for p, n in zip(paths, sizes, strict=True) if int(n) > 0]
        self.paths = [p for p, _ in keep]
        self.sizes = np.array([n for _, n in keep], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.dtype = np.dtype(dtype)
        self._maps: list[np.memmap | None] = [None] * len(self.paths)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _map(self, i: int) -> np.memmap:
        m = self._maps[i]
        if m is None:
            m = self._maps[i] = np.memmap(self.paths[i], dtype=self.dtype, mode="r", shape=(int(self.sizes[i]),))
        return m

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        if isinstance(index, int | np.integer):
            return self.take(np.array([index]))[0]
        return self.take(np.asarray(index))

    def take(self, index: np.ndarray) -> np.ndarray:
        """Tokens at global positions `index` (any shape)."""
        flat = index.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range [0, {len(self)})")
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._map(int(s))[flat[sel] - self.starts[s]]
        return out.reshape(index.shape)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int32 rows tokens[start : start + length]; a row inside one shard is one slice of its map."""
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((len(starts), length), dtype=np.int32)
        shard = np.searchsorted(self.starts, starts, side="right") - 1
        for r, (a, s) in enumerate(zip(starts, shard, strict=True)):
            lo = a - self.starts[s]
            if lo + length <= self.sizes[s]:
                out[r] = self._map(int(s))[lo : lo + length]
            else:  # across a shard boundary
                out[r] = self.take(np.arange(a, a + length))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = (
            np.concatenate([self._map(i) for i in range(len(self.paths))]) if self.paths else np.zeros(0, self.dtype)
        )
        return whole if dtype is None else whole.astype(dtype)


def windows(tokens, starts: np.ndarray, length: int) -> np.ndarray:
    """int32 rows tokens[start : start + length] of a flat array or a ShardedTokens."""
    if isinstance(tokens, ShardedTokens):
        return tokens.windows(starts, length)
    return np.asarray(tokens[np.asarray(starts)[:, None] + np.arange(length)], dtype=np.int32)
