"""The last stage of a preparation: every unit's record -> manifest.json, unigram counts and meta.json.

The manifest is deterministic (no times, no paths outside the dataset), so a run interrupted and resumed
writes the same bytes as one that was not. meta.json adds the summary (per-source sizes, bad records,
time per stage) and, written last, marks the dataset complete.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from research.config.schema import DataConfig
from research.data.dataset import MANIFEST, META
from research.data.readers import WorkUnit
from research.data.settings import FORMAT_VERSION
from research.data.shards import SHARDS, read_marker
from research.data.sources import Source
from research.errors import ConfigError

_FIRST_BAD = 5


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _split_totals(records: list[dict], split: str) -> dict:
    tokens = sum(r[split]["tokens"] for r in records)
    n_bytes = sum(r[split]["bytes"] for r in records)
    return {
        "tokens": tokens,
        "documents": sum(r[split]["documents"] for r in records),
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / tokens if tokens else 0.0,
    }


def _source_rows(sources: list[Source], records: list[dict]) -> list[dict]:
    rows = []
    for i, s in enumerate(sources):
        mine = [r for r in records if r["source"] == i]
        row = {"index": i, "source": s.name, "spec": s.spec, "kind": s.kind, "units": len(mine)}
        for split in ("train", "val"):
            t = _split_totals(mine, split)
            row.update(
                {f"{split}_tokens": t["tokens"], f"{split}_bytes": t["bytes"], f"{split}_documents": t["documents"]}
            )
        rows.append(row)
    return rows


def _check_not_empty(cfg: DataConfig, train: dict, val: dict, sources: list[dict]) -> None:
    for s in sources:
        if s["train_documents"] + s["val_documents"] == 0:
            raise ConfigError(
                f"data.sources: {s['spec']!r} contains no text (once bad records are skipped); point it at "
                "non-empty text, check data.text_field, or drop it."
            )
    if train["tokens"] == 0:
        raise ConfigError(
            "data.sources yields no text once bad records are skipped; point it at non-empty text (or check "
            "data.text_field)."
        )
    if val["documents"] == 0:
        raise ConfigError(
            f"the hash split sent none of the {train['documents']:,} documents to validation "
            f"(data.val_fraction={cfg.val_fraction}); raise data.val_fraction, add text, or lower data.chunk_chars "
            "so long texts are cut into more documents."
        )


def write_manifest_and_meta(
    cfg: DataConfig,
    final: Path,
    fp: str,
    settings: dict,
    sources: list[Source],
    units: list[WorkUnit],
    tok,
    stages: dict,
) -> dict:
    records = [read_marker(final, u.index) for u in units]
    missing = [u.where() for u, r in zip(units, records, strict=True) if r is None]
    if missing:
        raise RuntimeError(f"units not encoded: {', '.join(missing[:3])}")
    train, val = _split_totals(records, "train"), _split_totals(records, "val")
    per_source = _source_rows(sources, records)
    _check_not_empty(cfg, train, val, per_source)
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    for u in units:
        counts += np.load(final / SHARDS / f"unit-{u.index:05d}.counts.npy")
    tmp = final / ".unigram_counts.npy.tmp.npy"
    np.save(tmp, counts)
    os.replace(tmp, final / "unigram_counts.npy")
    p = counts[counts > 0] / counts.sum()
    h_nats = float(-(p * np.log(p)).sum())
    dtype = records[0]["dtype"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "dtype": dtype,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "units": [{k: r[k] for k in ("unit", "source", "where", "train", "val")} for r in records],
        "sources": per_source,
    }
    _write(final / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    bad_first = [w for r in records for w in r["bad_first"]][:_FIRST_BAD]
    empty_val = [s["source"] for s in per_source if s["val_tokens"] == 0]
    meta = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "fingerprint": fp,
        "vocab_size": tok.vocab_size,
        "dtype": dtype,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
        "eos_token": cfg.eos_token,
        "separator": "eos after every document",
        "tokenizer": Path(tok.path).name,
        "tokenizer_kind": tok.kind,
        "sources": per_source,
        "sources_without_validation": empty_val,
        "splits": {"train": train, "val": val},
        "n_train_tokens": train["tokens"],
        "n_val_tokens": val["tokens"],
        "bytes_per_token_train": train["bytes_per_token"],
        "bytes_per_token_val": val["bytes_per_token"],
        "unigram_entropy_nats": h_nats,
        "unigram_entropy_bits": h_nats / math.log(2),
        "bad_records": {
            "policy": cfg.on_bad_record,
            "count": sum(r["bad_records"] for r in records),
            "first": bad_first,
            "undecodable_bytes": sum(r["undecodable_bytes"] for r in records),
        },
        "settings": settings,
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
        "prepare_seconds": round(sum(stages.values()), 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write(final / META, json.dumps(meta, indent=2) + "\n")
    for u in units:  # folded into unigram_counts.npy
        (final / SHARDS / f"unit-{u.index:05d}.counts.npy").unlink(missing_ok=True)
    return meta
