"""Tokenizers: SentencePiece BPE trained on the train split (the default), or an existing one.

Training settings favour exact round trips (decode(encode(text)) == text): identity normalization, no
whitespace collapsing, no dummy prefix, newline as its own piece, and byte fallback for any character
outside the learned alphabet. Training is deterministic: a seeded sample of at most MAX_TRAIN_LINES lines
(research/data/sample.py) and a single trainer thread (the BPE trainer's result depends on its thread count).

`data.tokenizer=PATH` takes an existing SentencePiece `.model` or a Hugging Face `tokenizer.json`
(research/data/hf_tokenizer.py); load_tokenizer opens either.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from research.data.sample import LineSample
from research.errors import ConfigError

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
MAX_TRAIN_LINES = 400_000  # ~15 MB of text: trains in seconds, plenty for vocabularies <= 64k
MAX_TRAIN_CHARS = 50_000_000  # and at most this much text, which bounds the trainer's memory (docs/performance.md)

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


def train_tokenizer(
    documents: Iterable[str],
    vocab_size: int,
    model_path: Path | str,
    *,
    seed: int = 0,
    max_lines: int = MAX_TRAIN_LINES,
) -> Path:
    """Train a BPE model on a seeded sample of the documents' lines; write it to model_path (plus a .vocab)."""
    sample = LineSample(max_lines, seed)
    for doc in documents:
        sample.add_document(doc)
    return train_sentencepiece(sample.lines(MAX_TRAIN_CHARS), vocab_size, model_path, seed=seed)


def train_sentencepiece(lines: list[str], vocab_size: int, model_path: Path | str, *, seed: int = 0) -> Path:
    """Train a BPE model on these lines (in this order) and write it to model_path (plus a .vocab listing)."""
    model_path = Path(model_path)
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
    tmp = model_path.with_name(f".{model_path.name}.tmp")
    tmp.write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    model_path.with_suffix(".vocab").write_text(
        "".join(f"{i}\t{sp.id_to_piece(i)!r}\n" for i in range(sp.get_piece_size())), encoding="utf-8"
    )
    tmp.replace(model_path)  # last and atomic: a killed preparation never leaves half a model
    return model_path


class Tokenizer:
    """Thin wrapper over a SentencePieceProcessor (the interface every tokenizer here has)."""

    kind = "sentencepiece"

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


def load_tokenizer(path: Path | str, eos_token: str | None = None):
    """A SentencePiece `.model` or a Hugging Face `tokenizer.json`, by its file name."""
    path = Path(path)
    if path.suffix == ".json":
        from research.data.hf_tokenizer import HFTokenizer

        return HFTokenizer(path, eos_token=eos_token)
    return Tokenizer(path)
