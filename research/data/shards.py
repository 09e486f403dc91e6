"""One work unit -> its token shards, written atomically: the task every worker (a local process, a SLURM
array task) runs, and that a rerun after a crash skips when its marker exists.

For unit k, under <dataset>/shards/:
  train-k.bin, val-k.bin   token ids (uint16 or uint32), every document followed by the end-of-text id
  unit-k.counts.npy        unigram counts of the train tokens (summed into the dataset's entropy, then removed)
  unit-k.json              the marker, written last: tokens, documents, bytes and sha256 of each shard,
                           bad records skipped
Files are written under a .tmp name and renamed when complete, so a killed worker leaves no shard that
looks finished.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from research.data import documents as docs_mod
from research.data.readers import BadRecords, WorkUnit, read_unit
from research.data.sources import Source

SHARDS = "shards"
_BATCH_DOCS = 256
_TOKENIZERS: dict[str, object] = {}  # per worker process: loaded once


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to encode one unit (picklable; sent to other processes or cluster nodes)."""

    dataset_dir: str
    unit: WorkUnit
    sources: tuple[Source, ...]
    tokenizer: str
    eos_token: str | None
    dtype: str
    text_field: str
    chunk_chars: int
    split_seed: int
    val_fraction: float
    on_bad_record: str
    raw_dir: str


def marker_path(dataset_dir: Path, index: int) -> Path:
    return dataset_dir / SHARDS / f"unit-{index:05d}.json"


def read_marker(dataset_dir: Path, index: int) -> dict | None:
    """The unit's record when it finished and its shard files are whole, else None."""
    try:
        rec = json.loads(marker_path(dataset_dir, index).read_text())
    except (OSError, ValueError):
        return None
    for split in ("train", "val"):
        f = dataset_dir / SHARDS / rec[split]["file"]
        if not f.exists() or f.stat().st_size != rec[split]["tokens"] * np.dtype(rec["dtype"]).itemsize:
            return None
    return rec


def _tokenizer(path: str, eos_token: str | None):
    tok = _TOKENIZERS.get(path)
    if tok is None:
        from research.data.tokenizer import load_tokenizer

        tok = _TOKENIZERS[path] = load_tokenizer(path, eos_token=eos_token)
    return tok


class _ShardWriter:
    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, dtype
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.fh = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.tokens = self.documents = self.bytes = 0

    def write(self, ids: list[list[int]], n_bytes: int) -> np.ndarray:
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=sum(map(len, ids)))
        data = flat.astype(self.dtype).tobytes()
        self.fh.write(data)
        self.sha.update(data)
        self.tokens += flat.size
        self.documents += len(ids)
        self.bytes += n_bytes
        return flat

    def finish(self) -> dict:
        self.fh.close()
        os.replace(self.tmp, self.path)
        return {
            "file": self.path.name,
            "tokens": self.tokens,
            "documents": self.documents,
            "bytes": self.bytes,
            "sha256": self.sha.hexdigest(),
        }


def encode_unit(job: UnitJob) -> dict:
    """Encode the unit into its shards unless a finished marker exists; return the unit's record."""
    out = Path(job.dataset_dir)
    done = read_marker(out, job.unit.index)
    if done is not None and (out / SHARDS / f"unit-{job.unit.index:05d}.counts.npy").exists():
        return done
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(job.tokenizer, job.eos_token)
    dtype = np.dtype(job.dtype)
    k = job.unit.index
    writers = {s: _ShardWriter(out / SHARDS / f"{s}-{k:05d}.bin", dtype) for s in ("train", "val")}
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    bad = BadRecords(fail=job.on_bad_record == "fail")
    try:
        _encode(job, tok, writers, counts, bad)
    except BaseException:
        for w in writers.values():
            w.fh.close()
            w.tmp.unlink(missing_ok=True)
        raise
    record = {
        "unit": k,
        "source": job.unit.source,
        "where": job.unit.where(),
        "dtype": dtype.name,
        "bad_records": bad.count,
        "bad_first": bad.first,
        "undecodable_bytes": bad.undecodable_bytes,
    }
    counts_path = out / SHARDS / f"unit-{k:05d}.counts.npy"
    tmp_counts = counts_path.with_name(f"{counts_path.name}.tmp-{os.getpid()}.npy")
    np.save(tmp_counts, counts)
    os.replace(tmp_counts, counts_path)
    record.update({s: w.finish() for s, w in writers.items()})
    marker = marker_path(out, k)
    tmp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, marker)
    return record


def _encode(job: UnitJob, tok, writers: dict, counts: np.ndarray, bad: BadRecords) -> None:
    key = docs_mod.split_key(job.split_seed)
    raw = read_unit(job.unit, list(job.sources), job.text_field, Path(job.raw_dir), bad)
    stream = docs_mod.documents(raw, job.chunk_chars)
    while batch := list(itertools.islice(stream, _BATCH_DOCS)):
        ids = tok.encode_batch(batch)
        routed: dict[str, tuple[list, int]] = {"train": ([], 0), "val": ([], 0)}
        for doc, seq in zip(batch, ids, strict=True):
            seq.append(tok.eos_id)
            split = "val" if docs_mod.is_validation(doc, key, job.val_fraction) else "train"
            seqs, n = routed[split]
            seqs.append(seq)
            routed[split] = (seqs, n + len(doc.encode("utf-8")))
        for split, (seqs, n_bytes) in routed.items():
            if seqs:
                flat = writers[split].write(seqs, n_bytes)
                if split == "train":
                    counts += np.bincount(flat, minlength=tok.vocab_size)[: tok.vocab_size]
