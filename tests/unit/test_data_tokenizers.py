"""data.tokenizer: an existing SentencePiece model or a Hugging Face tokenizer.json, used as given."""

from __future__ import annotations

import numpy as np
import pytest
from data_corpus import data_cfg, hf_tokenizer_json, write_corpus

from research.data import iter_documents, load_tokenizer, prepare, train_tokenizer
from research.errors import ConfigError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, n_docs=30)
    return root


def decoded_docs(ds) -> list[str]:
    arr = np.asarray(ds.train_tokens())
    ends = np.flatnonzero(arr == ds.eos_id)
    tok = ds.tokenizer()
    return [tok.decode(seg[:-1]) for seg in np.split(arr, ends + 1)[:-1]]


def test_an_existing_tokenizer_json_is_used_as_given(tmp_path, corpus_dir):
    path = hf_tokenizer_json(tmp_path / "tokenizer.json", corpus_dir)
    ds = prepare(data_cfg([corpus_dir], tmp_path / "cache", tokenizer=str(path), vocab_size=999), verbose=False)
    tok = load_tokenizer(path)
    assert ds.vocab_size == tok.vocab_size == 400 and ds.dir.name.startswith("fixture-v400-")
    assert ds.meta["tokenizer"] == "tokenizer.json" and ds.meta["tokenizer_kind"] == "huggingface"
    assert (ds.dir / "tokenizer.json").read_bytes() == path.read_bytes()
    assert ds.eos_id == tok.tok.token_to_id("<|endoftext|>")
    docs = decoded_docs(ds)
    assert len(docs) == ds.meta["splits"]["train"]["documents"]
    assert all(d in set(iter_documents([str(corpus_dir)])) for d in docs)  # exact round trips
    bpt = ds.meta["splits"]["train"]["bytes"] / ds.meta["splits"]["train"]["tokens"]
    assert ds.bytes_per_token_train == pytest.approx(bpt)  # bits per byte stay exact
    assert sum(len(d.encode()) for d in docs) == ds.meta["splits"]["train"]["bytes"]


def test_a_tokenizer_json_without_an_end_of_text_token_needs_eos_token(tmp_path, corpus_dir):
    path = hf_tokenizer_json(tmp_path / "tokenizer.json", corpus_dir, specials=("[DOC]",))
    with pytest.raises(ConfigError, match=r"has no end-of-text token .*; set data\.eos_token"):
        prepare(data_cfg([corpus_dir], tmp_path / "cache", tokenizer=str(path)), verbose=False)
    ds = prepare(data_cfg([corpus_dir], tmp_path / "cache", tokenizer=str(path), eos_token="[DOC]"), verbose=False)
    assert ds.eos_id == load_tokenizer(path, eos_token="[DOC]").eos_id


def test_an_existing_sentencepiece_model_is_used_as_given(tmp_path, corpus_dir):
    model = train_tokenizer(iter_documents([str(corpus_dir)]), 330, tmp_path / "mine.model", seed=1)
    ds = prepare(data_cfg([corpus_dir], tmp_path / "cache", tokenizer=str(model)), verbose=False)
    assert ds.vocab_size == 330 and (ds.dir / "tokenizer.model").read_bytes() == model.read_bytes()
    assert "stage_seconds" in ds.meta and "tokenizer" not in ds.meta["stage_seconds"]  # not trained again
    assert set(decoded_docs(ds)) <= set(iter_documents([str(corpus_dir)]))
