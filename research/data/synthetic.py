"""A reproducible synthetic corpus of any size (no download): jsonl documents of pseudo-English.

Words are seeded syllable strings with Zipfian frequencies; sentences of 5 to 20 words form a pool, and
documents are paragraphs of pool sentences, so a corpus of gigabytes is written at disk speed while its
text still has a word-frequency tail a BPE tokenizer must learn. Used by `make bench-data` and the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "io"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "st"]


def vocabulary(rng: np.random.Generator, n_words: int) -> list[str]:
    words: set[str] = set()
    out = []
    while len(out) < n_words:
        n_syl = int(rng.integers(1, 4))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(n_syl)
        )
        if w and w not in words:
            words.add(w)
            out.append(w)
    return out


def sentence_pool(seed: int, n_sentences: int = 100_000, n_words: int = 20_000) -> list[str]:
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(rng, n_words), dtype=object)
    p = 1.0 / np.arange(1, n_words + 1) ** 1.1
    p /= p.sum()
    lengths = rng.integers(5, 21, n_sentences)
    ids = rng.choice(n_words, size=int(lengths.sum()), p=p)
    ends = np.cumsum(lengths)
    marks = rng.choice([".", ".", ".", "?", "!", ";"], size=n_sentences)
    pool = []
    start = 0
    for end, mark in zip(ends, marks, strict=True):
        s = " ".join(words[ids[start:end]])
        pool.append(s[0].upper() + s[1:] + mark)
        start = end
    return pool


def write_jsonl(path: Path | str, n_bytes: int, seed: int = 0, doc_chars: int = 4000) -> dict:
    """About n_bytes of jsonl documents ({"text": ...}) at path; returns documents and bytes written."""
    rng = np.random.default_rng(seed + 1)
    pool = sentence_pool(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = docs = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            picks = rng.integers(0, len(pool), 4096)
            paragraph_sizes = rng.integers(3, 7, 1024)
            k = 0
            paragraphs = []
            for size in paragraph_sizes:
                paragraphs.append(" ".join(pool[i] for i in picks[k : k + size]))
                k += size
                if k + 7 > len(picks):
                    break
            text, block = "", []
            for para in paragraphs:
                text = f"{text}\n\n{para}" if text else para
                if len(text) >= doc_chars:
                    block.append(json.dumps({"text": text}) + "\n")
                    text = ""
            data = "".join(block)
            f.write(data)
            written += len(data.encode("utf-8"))
            docs += len(block)
    return {"path": str(path), "documents": docs, "bytes": written}
