"""Small corpora the data tests write for themselves: documents of common English words."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from research.config.schema import DataConfig
from research.data import iter_documents

WORDS = (
    "the of and to in that is was he for it with as his on be at by had not are but from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now such like our "
    "over man me even most made after also did many before must through back years where much your way well down "
    "king queen lord sword night morning river mountain silver golden whisper thunder garden window letter"
).split()
VOCAB = 320


def make_doc(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(WORDS, size=n_words)
    lines, line = [], []
    for i, w in enumerate(words):
        line.append(str(w).capitalize() if not line else str(w))
        if len(line) >= rng.integers(6, 12) or i == n_words - 1:
            lines.append(" ".join(line) + rng.choice([".", ",", ";", "!", "?"]))
            line = []
    paras = [" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
    return "\n\n".join(paras)


def write_corpus(root: Path, n_docs: int = 48, seed: int = 0) -> list[str]:
    """n_docs text files under root/part{0,1,2}/, one document each."""
    rng = np.random.default_rng(seed)
    docs = [f"Document {i}.\n\n" + make_doc(rng, 250) for i in range(n_docs)]
    for i, d in enumerate(docs):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:03d}.txt").write_text(d, encoding="utf-8")
    return docs


def data_cfg(sources, cache_dir, **kw) -> DataConfig:
    base = dict(
        name="fixture",
        sources=[str(s) if isinstance(s, Path) else s for s in sources],
        cache_dir=str(cache_dir),
        vocab_size=VOCAB,
        val_fraction=0.1,
        split_seed=7,
    )
    base.update(kw)
    return DataConfig(**base)


def hf_tokenizer_json(path, corpus_dir, vocab: int = 400, specials=("<|endoftext|>",)):
    """A byte-level BPE tokenizer.json trained with the `tokenizers` library, as GPT-2's is made."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(iter_documents([str(corpus_dir)]), trainer)
    tok.save(str(path))
    return path
