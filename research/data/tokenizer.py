"""SentencePiece BPE tokenizer: trained on the train split only, saved with the prepared data.

Settings favour exact round trips (decode(encode(text)) == text): identity normalization, no
whitespace collapsing, no dummy prefix, newline as its own piece, and byte fallback for any
character outside the learned alphabet. Training is deterministic: a fixed seeded sample of
at most MAX_TRAIN_LINES lines and a single trainer thread (the BPE trainer's result depends on
its thread count).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from research.errors import ConfigError

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
MAX_TRAIN_LINES = 400_000  # ~15 MB of text: trains in seconds, plenty for vocabularies <= 64k

TRAINER_SETTINGS: dict = {
    "model_type": "bpe",
    "byte_fallback": True,
    "character_coverage": 0.9995,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "allow_whitespace_only_pieces": True,
    "split_digits": True,
    "user_defined_symbols": ["\n"],
    "unk_id": UNK_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "pad_id": -1,
    "max_sentence_length": 16384,
    "input_sentence_size": 0,  # we sample the lines ourselves (seeded)
    "shuffle_input_sentence": False,
    "num_threads": 1,
}


def training_lines(documents: Sequence[str], *, seed: int, max_lines: int = MAX_TRAIN_LINES) -> list[str]:
    """Non-empty lines of the documents; a seeded uniform sample (kept in corpus order) when
    there are more than max_lines."""
    lines = [line for doc in documents for line in doc.split("\n") if line.strip()]
    if len(lines) > max_lines:
        keep = np.sort(np.random.default_rng(seed).choice(len(lines), size=max_lines, replace=False))
        lines = [lines[i] for i in keep]
    return lines


def train_tokenizer(
    documents: Sequence[str],
    vocab_size: int,
    model_path: Path | str,
    *,
    seed: int = 0,
    max_lines: int = MAX_TRAIN_LINES,
) -> Path:
    """Train a BPE model on `documents` and write it to model_path (plus a .vocab listing)."""
    model_path = Path(model_path)
    lines = training_lines(documents, seed=seed, max_lines=max_lines)
    if not lines:
        raise ConfigError("data.sources yields no text to train the tokenizer on; point it at non-empty text.")
    proto = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=proto,
            vocab_size=vocab_size,
            minloglevel=2,
            **TRAINER_SETTINGS,
        )
    except RuntimeError as e:
        msg = str(e)
        high = re.search(r"Vocabulary size (?:is )?too high \((\d+)\).*?<= (\d+)", msg)
        if high:
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too large for this corpus (at most {high.group(2)} pieces can be "
                "learned from the train split); lower model.vocab_size / data.vocab_size or add text to data.sources."
            ) from e
        low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
        if low:
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too small for a byte-fallback BPE on this corpus (it needs at least "
                f"{low.group(2)} pieces: 256 bytes, the special tokens and every frequent character); raise "
                "model.vocab_size / data.vocab_size."
            ) from e
        raise
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(proto.getvalue())
    tok = Tokenizer(model_path)
    model_path.with_suffix(".vocab").write_text(
        "".join(f"{i}\t{tok.sp.id_to_piece(i)!r}\n" for i in range(tok.vocab_size)), encoding="utf-8"
    )
    return model_path


class Tokenizer:
    """Thin wrapper over a SentencePieceProcessor."""

    def __init__(self, model_path: Path | str):
        self.path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size: int = self.sp.get_piece_size()
        self.eos_id: int = self.sp.eos_id()
        self.bos_id: int = self.sp.bos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))


def load_tokenizer(model_path: Path | str) -> Tokenizer:
    return Tokenizer(model_path)
