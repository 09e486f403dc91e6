"""Packed token files: corpus -> split by document -> tokenizer -> train.bin / val.bin + meta.json.

Layout of a prepared dataset, `<cache_dir>/<name>-v<vocab>-<fingerprint[:10]>/`:
  train.bin, val.bin   flat token ids (uint16 when the vocabulary fits, else uint32), every
                       document followed by the EOS id
  tokenizer.model      the SentencePiece model trained on the train split (+ tokenizer.vocab)
  meta.json            sizes, bytes per token, unigram entropy, sources, settings, fingerprint
The directory is built under a temporary name and renamed into place when complete, so a
crash never leaves a dataset that looks finished; meta.json is the completeness marker.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import numpy as np
import sentencepiece as spm

from research.config.schema import DataConfig
from research.data import corpus as corpus_mod
from research.data.tokenizer import MAX_TRAIN_LINES, TRAINER_SETTINGS, Tokenizer, train_tokenizer
from research.errors import ConfigError

log = logging.getLogger("research.data")

FORMAT_VERSION = 1  # bump when the meaning of prepared files changes
META = "meta.json"
_ENCODE_BATCH_DOCS = 256


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    """Bits per UTF-8 byte from a mean cross-entropy in nats per token:
    bpb = (loss / ln 2) / (bytes / token)."""
    return float(loss_nats_per_token) / math.log(2) / float(bytes_per_token)


def resolve_cache_dir(cache_dir: str | Path) -> Path:
    p = Path(cache_dir).expanduser()
    return p if p.is_absolute() else corpus_mod.PROJECT_ROOT / p


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


@dataclass
class Dataset:
    """A prepared dataset on disk (see the module docstring for the layout)."""

    dir: Path
    meta: dict
    name: str
    fingerprint: str
    tokenizer_path: Path
    train_path: Path
    val_path: Path
    vocab_size: int
    dtype: np.dtype
    eos_id: int
    n_train_tokens: int
    n_val_tokens: int
    bytes_per_token_train: float
    bytes_per_token_val: float
    unigram_entropy_bits: float  # per token, of the train split: the baseline a model must beat
    unigram_entropy_nats: float

    @classmethod
    def load(cls, directory: Path | str) -> Dataset:
        d = Path(directory)
        meta = json.loads((d / META).read_text())
        return cls(
            dir=d,
            meta=meta,
            name=meta["name"],
            fingerprint=meta["fingerprint"],
            tokenizer_path=d / meta["tokenizer"],
            train_path=d / meta["splits"]["train"]["file"],
            val_path=d / meta["splits"]["val"]["file"],
            vocab_size=int(meta["vocab_size"]),
            dtype=np.dtype(meta["dtype"]),
            eos_id=int(meta["eos_id"]),
            n_train_tokens=int(meta["splits"]["train"]["tokens"]),
            n_val_tokens=int(meta["splits"]["val"]["tokens"]),
            bytes_per_token_train=float(meta["bytes_per_token_train"]),
            bytes_per_token_val=float(meta["bytes_per_token_val"]),
            unigram_entropy_bits=float(meta["unigram_entropy_bits"]),
            unigram_entropy_nats=float(meta["unigram_entropy_nats"]),
        )

    def _tokens(self, path: Path, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))

    def train_tokens(self) -> np.ndarray:
        return self._tokens(self.train_path, self.n_train_tokens)

    def val_tokens(self) -> np.ndarray:
        return self._tokens(self.val_path, self.n_val_tokens)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.tokenizer_path)

    def bits_per_byte(self, val_loss_nats_per_token: float) -> float:
        """Validation bits per byte for a mean validation loss (nats per token)."""
        return bits_per_byte(val_loss_nats_per_token, self.bytes_per_token_val)

    def summary(self) -> str:
        m = self.meta
        tr, va = m["splits"]["train"], m["splits"]["val"]
        lines = [
            f"dataset {self.name}: {self.dir}",
            f"  sources      {', '.join(s['source'] for s in m['sources'])}",
            f"  vocab        {self.vocab_size} ({self.dtype.name}), tokenizer {self.tokenizer_path.name}",
            f"  documents    train {tr['documents']:,}  val {va['documents']:,}",
            f"  bytes        train {tr['bytes']:,}  val {va['bytes']:,}",
            f"  tokens       train {tr['tokens']:,}  val {va['tokens']:,}",
            f"  bytes/token  train {self.bytes_per_token_train:.4f}  val {self.bytes_per_token_val:.4f}",
            f"  unigram entropy of train tokens: {self.unigram_entropy_bits:.4f} bits/token = "
            f"{self.unigram_entropy_nats:.4f} nats/token = "
            f"{self.unigram_entropy_bits / self.bytes_per_token_train:.4f} bits/byte",
        ]
        if "prepare_seconds" in m:
            lines.append(f"  prepared in  {m['prepare_seconds']:.1f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Settings, fingerprint, split


def _check(cfg: DataConfig) -> None:
    try:  # an OmegaConf node from Hydra resolves ${model.vocab_size} here
        v = cfg.vocab_size
    except Exception as e:
        raise ConfigError(f"data.vocab_size cannot be resolved ({e}); set model.vocab_size or data.vocab_size.") from e
    if isinstance(v, str) or isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(
            f"data.vocab_size={v!r} is not an integer; set data.vocab_size (it follows model.vocab_size in a run)."
        )
    if not 0 < v < 2**32:
        raise ConfigError(f"data.vocab_size={v} must be a positive integer below 2**32; set model.vocab_size to one.")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} must lie in (0, 1); use e.g. 0.02.")
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"data.name={cfg.name!r} must be a plain non-empty name; it names the cache folder.")
    if getattr(cfg, "chunk_chars", 0) < 0:
        raise ConfigError(f"data.chunk_chars={cfg.chunk_chars} must be >= 0 (0 keeps every document whole).")


def settings_of(cfg: DataConfig, sources: list[corpus_mod.Source]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "sources": [s.fingerprint() for s in sources],
        "text_field": cfg.text_field,
        "chunk_chars": int(getattr(cfg, "chunk_chars", 8192)),
        "vocab_size": int(cfg.vocab_size),
        "val_fraction": float(cfg.val_fraction),
        "split_seed": int(cfg.split_seed),
        "tokenizer": {**TRAINER_SETTINGS, "max_train_lines": MAX_TRAIN_LINES, "sentencepiece": spm.__version__},
    }


def fingerprint_of(settings: dict) -> str:
    return sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def split_documents(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation documents: round(val_fraction * n) of them (at least 1), chosen
    by a permutation seeded with split_seed."""
    if n_docs < 2:
        raise ConfigError(
            f"data.sources yields {n_docs} document(s), too few to hold out a validation split; add text or "
            "lower data.chunk_chars so long texts are cut into more documents."
        )
    n_val = min(n_docs - 1, max(1, round(val_fraction * n_docs)))
    mask = np.zeros(n_docs, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Preparation


def _write_split(docs: list[str], tok: Tokenizer, path: Path, dtype: np.dtype, count: bool) -> dict:
    n_tokens = 0
    n_bytes = 0
    counts = np.zeros(tok.vocab_size, dtype=np.int64) if count else None
    threads = max(1, min(4, os.cpu_count() or 1))
    with open(path, "wb") as f:
        for i in range(0, len(docs), _ENCODE_BATCH_DOCS):
            batch = docs[i : i + _ENCODE_BATCH_DOCS]
            ids = tok.encode_batch(batch, num_threads=threads)
            for seq in ids:
                seq.append(tok.eos_id)
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=sum(map(len, ids)))
            flat.astype(dtype).tofile(f)
            n_tokens += flat.size
            n_bytes += sum(len(d.encode("utf-8")) for d in batch)
            if counts is not None:
                counts += np.bincount(flat, minlength=tok.vocab_size)
    out = {
        "file": path.name,
        "documents": len(docs),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
    }
    if counts is not None:
        p = counts[counts > 0] / counts.sum()
        out["unigram_entropy_nats"] = float(-(p * np.log(p)).sum())
    return out


def _say(verbose: bool, msg: str) -> None:
    log.info(msg)
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def dataset_dir(cfg: DataConfig) -> tuple[Path, str, dict, list[corpus_mod.Source]]:
    """Where cfg's prepared dataset lives, its fingerprint and settings (no text is read)."""
    _check(cfg)
    sources = corpus_mod.resolve_sources(list(cfg.sources))
    settings = settings_of(cfg, sources)
    fp = fingerprint_of(settings)
    root = resolve_cache_dir(cfg.cache_dir)
    return root / f"{cfg.name}-v{int(cfg.vocab_size)}-{fp[:10]}", fp, settings, sources


def _complete(d: Path, fp: str) -> bool:
    try:
        return json.loads((d / META).read_text())["fingerprint"] == fp
    except (OSError, ValueError, KeyError):
        return False


def prepare(cfg: DataConfig, *, verbose: bool = True) -> Dataset:
    """Prepare (or reuse) the token files for cfg (a DataConfig or the `data` node of a composed
    Hydra config); idempotent and safe to call concurrently."""
    final, fp, settings, sources = dataset_dir(cfg)
    if _complete(final, fp):
        return Dataset.load(final)

    t0 = time.perf_counter()
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _say(verbose, f"[data] preparing {final.name} from {', '.join(cfg.sources)}")
    corp = corpus_mod.load_corpus(
        sources=list(cfg.sources),
        text_field=cfg.text_field,
        cache_dir=root,
        chunk_chars=int(getattr(cfg, "chunk_chars", 8192)),
    )
    docs = corp.documents
    is_val = split_documents(len(docs), cfg.val_fraction, cfg.split_seed)
    train_docs = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val_docs = [d for d, v in zip(docs, is_val, strict=True) if v]
    _say(verbose, f"[data] {len(docs):,} documents: {len(train_docs):,} train, {len(val_docs):,} val")

    tmp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        vocab = int(cfg.vocab_size)
        tok_path = train_tokenizer(train_docs, vocab, tmp / "tokenizer.model", seed=cfg.split_seed)
        tok = Tokenizer(tok_path)
        dtype = token_dtype(vocab)
        _say(verbose, f"[data] tokenizer trained ({vocab} pieces); encoding")
        train = _write_split(train_docs, tok, tmp / "train.bin", dtype, count=True)
        val = _write_split(val_docs, tok, tmp / "val.bin", dtype, count=False)
        h_nats = train.pop("unigram_entropy_nats")
        meta = {
            "format_version": FORMAT_VERSION,
            "name": cfg.name,
            "fingerprint": fp,
            "vocab_size": vocab,
            "dtype": dtype.name,
            "eos_id": tok.eos_id,
            "bos_id": tok.bos_id,
            "separator": "eos after every document",
            "tokenizer": tok_path.name,
            "sources": corp.stats(),
            "splits": {"train": train, "val": val},
            "n_train_tokens": train["tokens"],
            "n_val_tokens": val["tokens"],
            "bytes_per_token_train": train["bytes_per_token"],
            "bytes_per_token_val": val["bytes_per_token"],
            "unigram_entropy_nats": h_nats,
            "unigram_entropy_bits": h_nats / math.log(2),
            "settings": settings,
            "prepare_seconds": round(time.perf_counter() - t0, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final, fp):  # a stale, unfinished folder from elsewhere: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            # else another process finished the same dataset first: keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ds = Dataset.load(final)
    _say(
        verbose,
        f"[data] ready in {time.perf_counter() - t0:.1f} s: {ds.n_train_tokens:,} train and "
        f"{ds.n_val_tokens:,} val tokens, {ds.bytes_per_token_val:.3f} bytes/token (val)",
    )
    return ds
