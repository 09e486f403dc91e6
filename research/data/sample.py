"""A seeded uniform sample of lines for tokenizer training, in bounded memory and independent of order.

Each non-empty line gets a priority from a keyed hash of its text; the sample is the `k` lines of lowest
priority (bottom-k sampling, a form of reservoir sampling). Samples of parts merge into the sample of
the whole, so workers can sample their units apart and the result does not depend on how many there were.
Identical lines share a priority, so a line repeated across the corpus enters the sample once.
"""

from __future__ import annotations

import hashlib
import heapq
from pathlib import Path

from research.data import documents as docs_mod
from research.data.readers import BadRecords, read_unit


class LineSample:
    def __init__(self, k: int, seed: int) -> None:
        self.k = int(k)
        self._key = int(seed).to_bytes(8, "little", signed=True)
        self._heap: list[tuple[int, str]] = []  # (-priority, line): the largest kept priority on top
        self._members: set[str] = set()

    def add_document(self, doc: str) -> None:
        for line in doc.split("\n"):
            if line.strip():
                self.add(line)

    def add(self, line: str) -> None:
        p = int.from_bytes(hashlib.blake2b(line.encode("utf-8"), digest_size=8, key=self._key).digest(), "little")
        heap = self._heap
        if len(heap) < self.k:
            if line not in self._members:
                heapq.heappush(heap, (-p, line))
                self._members.add(line)
        elif -p > heap[0][0] and line not in self._members:
            _, dropped = heapq.heapreplace(heap, (-p, line))
            self._members.discard(dropped)
            self._members.add(line)

    def merge(self, items: list[tuple[int, str]]) -> None:
        for neg_p, line in items:
            heap = self._heap
            if line in self._members:
                continue
            if len(heap) < self.k:
                heapq.heappush(heap, (neg_p, line))
                self._members.add(line)
            elif neg_p > heap[0][0]:
                _, dropped = heapq.heapreplace(heap, (neg_p, line))
                self._members.discard(dropped)
                self._members.add(line)

    def items(self) -> list[tuple[int, str]]:
        return list(self._heap)

    def lines(self, max_chars: int | None = None) -> list[str]:
        """The sample in priority order (deterministic whatever the order lines were added in), cut where it
        would exceed max_chars characters (long lines would otherwise let the trainer's memory grow)."""
        out, total = [], 0
        for _, line in sorted(self._heap, key=lambda t: (-t[0], t[1])):
            total += len(line)
            if max_chars is not None and total > max_chars and out:
                break
            out.append(line)
        return out

    def __len__(self) -> int:
        return len(self._heap)


def sample_unit(job, k: int, seed: int) -> list[tuple[int, str]]:
    """The bottom-k lines of one work unit's train documents (a worker task; `job` is a shards.UnitJob)."""
    sample = LineSample(k, seed)
    key = docs_mod.split_key(job.split_seed)
    bad = BadRecords(fail=job.on_bad_record == "fail")
    raw = read_unit(job.unit, list(job.sources), job.text_field, Path(job.raw_dir), bad)
    for doc in docs_mod.documents(raw, job.chunk_chars):
        if not docs_mod.is_validation(doc, key, job.val_fraction):
            sample.add_document(doc)
    return sample.items()
