"""A prepared dataset on disk, read back: its shards as token streams, per source and split, and its summary.

Layout of `<cache_dir>/<name>-v<vocab>-<fingerprint[:10]>/`:
  tokenizer.model | tokenizer.json   trained on the train split, or the one data.tokenizer named
  units.json                         the work units (what each shard was made from)
  shards/{train,val}-<unit>.bin      token ids, every document followed by the end-of-text id
  shards/unit-<unit>.json            each unit's record (tokens, documents, bytes, sha256, bad records)
  manifest.json                      every shard with its size and checksum, per-source totals
  unigram_counts.npy                 train token counts (the unigram entropy baseline)
  meta.json                          written last: the completeness marker and the summary
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from research.data.sharded import ShardedTokens
from research.data.shards import SHARDS
from research.data.tokenizer import load_tokenizer

META = "meta.json"
MANIFEST = "manifest.json"


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    """Bits per UTF-8 byte from a mean cross-entropy in nats per token: bpb = (loss / ln 2) / (bytes / token)."""
    return float(loss_nats_per_token) / math.log(2) / float(bytes_per_token)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


@dataclass
class Dataset:
    dir: Path
    meta: dict
    manifest: dict
    weights: list[float] | None = None  # mixture weights per source (data.sources), set by prepare()

    @classmethod
    def load(cls, directory: Path | str) -> Dataset:
        d = Path(directory)
        return cls(d, json.loads((d / META).read_text()), json.loads((d / MANIFEST).read_text()))

    # -- what it is ---------------------------------------------------------------------------
    name = property(lambda self: self.meta["name"])
    fingerprint = property(lambda self: self.meta["fingerprint"])
    vocab_size = property(lambda self: int(self.meta["vocab_size"]))
    dtype = property(lambda self: np.dtype(self.meta["dtype"]))
    eos_id = property(lambda self: int(self.meta["eos_id"]))
    tokenizer_path = property(lambda self: self.dir / self.meta["tokenizer"])
    n_train_tokens = property(lambda self: int(self.meta["splits"]["train"]["tokens"]))
    n_val_tokens = property(lambda self: int(self.meta["splits"]["val"]["tokens"]))
    bytes_per_token_train = property(lambda self: float(self.meta["bytes_per_token_train"]))
    bytes_per_token_val = property(lambda self: float(self.meta["bytes_per_token_val"]))
    unigram_entropy_nats = property(lambda self: float(self.meta["unigram_entropy_nats"]))
    unigram_entropy_bits = property(lambda self: float(self.meta["unigram_entropy_bits"]))
    source_names = property(lambda self: [s["source"] for s in self.meta["sources"]])

    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path, eos_token=self.meta.get("eos_token"))

    # -- token streams ------------------------------------------------------------------------
    def _tokens(self, split: str, source: int | None) -> ShardedTokens:
        units = [u for u in self.manifest["units"] if source is None or u["source"] == source]
        paths = [self.dir / SHARDS / u[split]["file"] for u in units]
        return ShardedTokens(paths, [u[split]["tokens"] for u in units], self.dtype)

    def train_tokens(self, source: int | None = None) -> ShardedTokens:
        """Every train shard in unit order (sources in data.sources order), or one source's."""
        return self._tokens("train", source)

    def val_tokens(self, source: int | None = None) -> ShardedTokens:
        return self._tokens("val", source)

    def val_source_starts(self) -> np.ndarray:
        """Where each source's validation tokens begin in val_tokens() (sources are contiguous there)."""
        sizes = [s["val_tokens"] for s in self.meta["sources"]]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def source_bytes_per_token_val(self) -> list[float]:
        return [s["val_bytes"] / s["val_tokens"] if s["val_tokens"] else float("nan") for s in self.meta["sources"]]

    def bits_per_byte(self, val_loss_nats_per_token: float) -> float:
        return bits_per_byte(val_loss_nats_per_token, self.bytes_per_token_val)

    # -- summary ------------------------------------------------------------------------------
    def summary(self) -> str:
        m = self.meta
        tr, va = m["splits"]["train"], m["splits"]["val"]
        lines = [
            f"dataset {self.name}: {self.dir}",
            f"  sources      {', '.join(_source_line(s, self.weights) for s in m['sources'])}",
            f"  vocab        {self.vocab_size} ({self.dtype.name}), tokenizer {self.tokenizer_path.name}",
            f"  documents    train {tr['documents']:,}  val {va['documents']:,}",
            f"  bytes        train {tr['bytes']:,}  val {va['bytes']:,}",
            f"  tokens       train {tr['tokens']:,}  val {va['tokens']:,}",
            f"  bytes/token  train {self.bytes_per_token_train:.4f}  val {self.bytes_per_token_val:.4f}",
            f"  unigram entropy of train tokens: {self.unigram_entropy_bits:.4f} bits/token = "
            f"{self.unigram_entropy_nats:.4f} nats/token = "
            f"{self.unigram_entropy_bits / self.bytes_per_token_train:.4f} bits/byte",
            f"  shards       {len(self.manifest['units'])} work units, {2 * len(self.manifest['units'])} shard files",
        ]
        bad = m.get("bad_records", {})
        if bad.get("count"):
            lines.append(f"  bad records  {bad['count']:,} skipped (data.on_bad_record=skip), first:")
            lines += [f"    {where}" for where in bad.get("first", [])]
        if bad.get("undecodable_bytes"):
            lines.append(f"  undecodable  {bad['undecodable_bytes']:,} bytes replaced by U+FFFD")
        stages = m.get("stage_seconds") or {}
        if stages:
            lines.append("  time         " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
        return "\n".join(lines)


def _source_line(s: dict, weights: list | None) -> str:
    share = f" weight {weights[s['index']]:.3g}" if weights else ""
    return f"{s['source']} ({s['train_tokens']:,} train / {s['val_tokens']:,} val tokens{share})"
