"""The data settings checked once, and what a prepared dataset depends on (its fingerprint and folder).

The folder is `<cache_dir>/<name>-v<vocab>-<fingerprint[:10]>/`; the fingerprint covers the sources (pinned
built-in digests, or every file's path, size and mtime), the text settings, the split, the work-unit size
(it fixes where big files are cut) and the tokenizer (its training settings, or the sha256 of a given one).
How the work is run (workers, executor, on_bad_record) and the mixture weights are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import sentencepiece as spm

from research.config.schema import DataConfig
from research.data.sources import PROJECT_ROOT, Source, resolve_sources
from research.data.tokenizer import MAX_TRAIN_CHARS, MAX_TRAIN_LINES, TRAINER_SETTINGS, load_tokenizer
from research.errors import ConfigError

FORMAT_VERSION = 2  # 2: sharded, split by a hash of each document
BAD_RECORD_POLICIES = ("skip", "fail")


def resolve_cache_dir(cache_dir: str | Path) -> Path:
    p = Path(cache_dir).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def check(cfg: DataConfig) -> None:
    """Every data setting, each refused with one sentence naming it and the fix."""
    if cfg.tokenizer is None:
        try:  # an OmegaConf node from Hydra resolves ${model.vocab_size} here
            v = cfg.vocab_size
        except Exception as e:
            raise ConfigError(
                f"data.vocab_size cannot be resolved ({e}); set model.vocab_size or data.vocab_size."
            ) from e
        if isinstance(v, str | bool) or not isinstance(v, int):
            raise ConfigError(
                f"data.vocab_size={v!r} is not an integer; set data.vocab_size (it follows model.vocab_size in a run)."
            )
        if not 0 < v < 2**32:
            raise ConfigError(
                f"data.vocab_size={v} must be a positive integer below 2**32; set model.vocab_size to one."
            )
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} must lie in (0, 1); use e.g. 0.02.")
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"data.name={cfg.name!r} must be a plain non-empty name; it names the cache folder.")
    if cfg.chunk_chars < 0:
        raise ConfigError(f"data.chunk_chars={cfg.chunk_chars} must be >= 0 (0 keeps every document whole).")
    if cfg.on_bad_record not in BAD_RECORD_POLICIES:
        raise ConfigError(f"data.on_bad_record={cfg.on_bad_record!r} must be skip (count and go on) or fail.")
    if cfg.unit_mb <= 0 or cfg.tokenizer_sample_mb <= 0:
        raise ConfigError("data.unit_mb and data.tokenizer_sample_mb must be positive (megabytes of text).")
    if cfg.workers is not None and cfg.workers < 1:
        raise ConfigError(f"data.workers={cfg.workers} must be at least 1, or null for every core.")
    if cfg.tokenizer is not None and not _tokenizer_path(cfg.tokenizer).is_file():
        raise ConfigError(
            f"data.tokenizer={cfg.tokenizer} does not exist; give a SentencePiece .model or a Hugging Face "
            "tokenizer.json, or null to train SentencePiece on the corpus."
        )


def _tokenizer_path(spec: str) -> Path:
    p = Path(spec).expanduser()
    if not p.is_absolute() and not p.exists():
        p = PROJECT_ROOT / p
    return p.resolve()


def tokenizer_file(cfg: DataConfig) -> Path | None:
    return None if cfg.tokenizer is None else _tokenizer_path(cfg.tokenizer)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def settings_of(cfg: DataConfig, sources: list[Source], vocab_size: int) -> dict:
    given = tokenizer_file(cfg)
    tokenizer = (
        {"file": given.name, "sha256": _sha256(given), "eos_token": cfg.eos_token}
        if given is not None
        else {
            **TRAINER_SETTINGS,
            "max_train_lines": MAX_TRAIN_LINES,
            "max_train_chars": MAX_TRAIN_CHARS,
            "sample_mb": int(cfg.tokenizer_sample_mb),
            "sentencepiece": spm.__version__,
        }
    )
    return {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "sources": [s.fingerprint() for s in sources],
        "text_field": cfg.text_field,
        "chunk_chars": int(cfg.chunk_chars),
        "vocab_size": int(vocab_size),
        "val_fraction": float(cfg.val_fraction),
        "split_seed": int(cfg.split_seed),
        "unit_mb": int(cfg.unit_mb),
        "tokenizer": tokenizer,
    }


def fingerprint_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def given_vocab_size(cfg: DataConfig) -> int:
    """The vocabulary: the given tokenizer's, else data.vocab_size."""
    path = tokenizer_file(cfg)
    if path is None:
        return int(cfg.vocab_size)
    return int(load_tokenizer(path, eos_token=cfg.eos_token).vocab_size)


def dataset_dir(cfg: DataConfig) -> tuple[Path, str, dict, list[Source]]:
    """Where cfg's prepared dataset lives, its fingerprint, settings and sources (no text is read)."""
    check(cfg)
    sources = resolve_sources(list(cfg.sources))
    vocab = given_vocab_size(cfg)
    settings = settings_of(cfg, sources, vocab)
    fp = fingerprint_of(settings)
    return resolve_cache_dir(cfg.cache_dir) / f"{cfg.name}-v{vocab}-{fp[:10]}", fp, settings, sources
