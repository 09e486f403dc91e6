"""An existing Hugging Face `tokenizer.json` (GPT-2's, Llama's, ...) behind the project's tokenizer interface.

Encoding goes through the `tokenizers` library (Rust). Documents are encoded without special tokens and
followed by the end-of-text token: `data.eos_token` when set, else the first of the usual names the file
defines. Bits per byte stay exact: they count the bytes of the text as read, whatever the tokenizer's
normalizer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from research.errors import ConfigError

EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]")


class HFTokenizer:
    kind = "huggingface"

    def __init__(self, path: Path | str, eos_token: str | None = None) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self.path = Path(path)
        try:
            self.tok = RustTokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises a bare Exception for unreadable files
            raise ConfigError(
                f"data.tokenizer={self.path} is not a readable Hugging Face tokenizer.json ({e}); give a "
                "tokenizer.json or a SentencePiece .model."
            ) from e
        self.vocab_size: int = self.tok.get_vocab_size(with_added_tokens=True)
        vocab = self.tok.get_vocab(with_added_tokens=True)
        names = (eos_token,) if eos_token else EOS_NAMES
        eos = next((vocab[n] for n in names if n in vocab), None)
        if eos is None:
            raise ConfigError(
                f"data.tokenizer={self.path} has no end-of-text token "
                f"({'no ' + repr(eos_token) if eos_token else 'none of ' + ', '.join(EOS_NAMES)}); set "
                "data.eos_token to the token that separates documents."
            )
        self.eos_id: int = int(eos)
        self.bos_id: int = next((int(vocab[n]) for n in BOS_NAMES if n in vocab), -1)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def piece(self, token_id: int) -> str:
        return self.tok.id_to_token(int(token_id)) or ""
