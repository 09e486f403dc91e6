"""Preparation: the hash split, the shards and their manifest, the tokenizer, caching, the CLI."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from data_corpus import VOCAB, data_cfg, write_corpus

from research.data import Dataset, bits_per_byte, dataset_dir, iter_documents, prepare, train_tokenizer
from research.data import documents as docs_mod
from research.data.__main__ import main as cli_main
from research.errors import ConfigError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def ds(corpus_dir, tmp_path_factory) -> Dataset:
    return prepare(data_cfg([corpus_dir], tmp_path_factory.mktemp("cache")), verbose=False)


def expected_splits(sources, ds: Dataset) -> tuple[list[str], list[str]]:
    s = ds.meta["settings"]
    key = docs_mod.split_key(s["split_seed"])
    train, val = [], []
    for d in iter_documents(sources):
        (val if docs_mod.is_validation(d, key, s["val_fraction"]) else train).append(d)
    return train, val


def decoded(ds: Dataset, tokens) -> list[str]:
    arr = np.asarray(tokens)
    ends = np.flatnonzero(arr == ds.eos_id)
    return [ds.tokenizer().decode(seg[:-1]) for seg in np.split(arr, ends + 1)[:-1]]


def test_the_shards_hold_exactly_the_split_documents(ds, corpus_dir):
    train_docs, val_docs = expected_splits([str(corpus_dir)], ds)
    assert 0 < len(val_docs) < 12  # about 10% of 48, by hash
    for docs, arr, split in [(train_docs, ds.train_tokens(), "train"), (val_docs, ds.val_tokens(), "val")]:
        assert arr.dtype == np.uint16 and np.asarray(arr)[-1] == ds.eos_id
        assert decoded(ds, arr) == docs
        m = ds.meta["splits"][split]
        assert m["documents"] == len(docs) and m["tokens"] == len(arr)
        assert m["bytes"] == sum(len(d.encode("utf-8")) for d in docs)  # real UTF-8 byte counts
        assert m["bytes_per_token"] == pytest.approx(m["bytes"] / m["tokens"])


def test_the_manifest_lists_every_shard_with_its_size_and_checksum(ds):
    manifest = json.loads((ds.dir / "manifest.json").read_text())
    assert len(manifest["units"]) == 48  # one per file
    for unit in manifest["units"]:
        for split in ("train", "val"):
            f = ds.dir / "shards" / unit[split]["file"]
            assert f.stat().st_size == 2 * unit[split]["tokens"]
            assert hashlib.sha256(f.read_bytes()).hexdigest() == unit[split]["sha256"]
    leftovers = [p.name for p in ds.dir.rglob("*") if ".tmp" in p.name or p.name.endswith(".counts.npy")]
    assert leftovers == []


def test_validation_never_overlaps_training(ds, corpus_dir):
    train_docs, val_docs = expected_splits([str(corpus_dir)], ds)
    train_text = ds.tokenizer().decode(np.asarray(ds.train_tokens()))
    for d in val_docs:
        assert d not in train_docs and d.split("\n\n")[1] not in train_text  # not even one paragraph


def test_the_split_of_a_document_does_not_move_when_documents_are_added(tmp_path):
    write_corpus(tmp_path / "c", n_docs=40, seed=1)
    before = prepare(data_cfg([tmp_path / "c"], tmp_path / "cache"), verbose=False)
    write_corpus(tmp_path / "more", n_docs=40, seed=2)
    for f in (tmp_path / "more").rglob("*.txt"):
        f.rename(f.with_name("new_" + f.name))
        (tmp_path / "c" / f.parent.name / ("new_" + f.name)).write_bytes(f.with_name("new_" + f.name).read_bytes())
    after = prepare(data_cfg([tmp_path / "c"], tmp_path / "cache"), verbose=False)
    assert after.dir != before.dir and after.meta["splits"]["val"]["documents"] > 0
    old_val, new_val = set(decoded(before, before.val_tokens())), set(decoded(after, after.val_tokens()))
    old_train = set(decoded(before, before.train_tokens()))
    assert old_val <= new_val and not old_train & new_val


def test_unigram_entropy_and_bits_per_byte(ds):
    counts = np.bincount(np.asarray(ds.train_tokens()), minlength=ds.vocab_size)
    p = counts[counts > 0] / counts.sum()
    assert ds.unigram_entropy_nats == pytest.approx(float(-(p * np.log(p)).sum()))
    assert bits_per_byte(2 * math.log(2), 2.0) == pytest.approx(1.0)
    val = ds.meta["splits"]["val"]
    assert ds.bits_per_byte(3.0) == pytest.approx(3.0 / math.log(2) * val["tokens"] / val["bytes"])


def test_tokenizer_round_trip_and_deterministic_training(ds, corpus_dir, tmp_path):
    tok = ds.tokenizer()
    assert tok.vocab_size == VOCAB
    for text in ["The king said: no more.\n\n  Indented line,\tand a tab.", "naïve café — Grüße, 漢字, emoji 🙂\n"]:
        assert tok.decode(tok.encode(text)) == text
    docs = list(iter_documents([str(corpus_dir)]))
    a = train_tokenizer(docs, VOCAB, tmp_path / "a.model", seed=3).read_bytes()
    assert train_tokenizer(reversed(docs), VOCAB, tmp_path / "b.model", seed=3).read_bytes() == a  # order-free sample
    with pytest.raises(ConfigError, match=r"data\.vocab_size=60000 is too large.*model\.vocab_size"):
        train_tokenizer(docs, 60000, tmp_path / "t.model")


def test_prepare_is_cached_and_how_it_runs_is_not_part_of_the_dataset(ds, corpus_dir):
    cfg = data_cfg([corpus_dir], ds.dir.parent)
    final, fp, _, _ = dataset_dir(cfg)
    assert ds.dir == final and final.name == f"fixture-v{VOCAB}-{fp[:10]}"
    before = {p.name: p.stat().st_mtime_ns for p in final.rglob("*")}
    again = prepare(data_cfg([corpus_dir], ds.dir.parent, workers=3, on_bad_record="fail"), verbose=False)
    assert again.dir == ds.dir and again.meta == ds.meta
    assert {p.name: p.stat().st_mtime_ns for p in final.rglob("*")} == before
    for changed in ({"vocab_size": VOCAB + 8}, {"split_seed": 8}, {"unit_mb": 1}, {"chunk_chars": 100}):
        assert dataset_dir(data_cfg([corpus_dir], ds.dir.parent, **changed))[0] != final


def test_bad_settings_are_one_sentence(tmp_path, corpus_dir):
    for kw, match in [
        ({"vocab_size": "${model.vocab_size}"}, r"^data\.vocab_size"),
        ({"on_bad_record": "ignore"}, r"^data\.on_bad_record='ignore' must be skip"),
        ({"tokenizer": str(tmp_path / "none.model")}, r"^data\.tokenizer=.* does not exist"),
        ({"workers": 0}, r"^data\.workers=0 must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            prepare(data_cfg([corpus_dir], tmp_path, **kw), verbose=False)


def test_a_split_with_no_validation_document_is_refused(tmp_path):
    write_corpus(tmp_path / "c", n_docs=5)
    with pytest.raises(ConfigError, match=r"the hash split sent none of the 5 documents to validation"):
        prepare(data_cfg([tmp_path / "c"], tmp_path / "cache", val_fraction=1e-9), verbose=False)


def test_prepare_accepts_a_hydra_data_node(ds, corpus_dir):
    from omegaconf import OmegaConf

    data = OmegaConf.structured(data_cfg([corpus_dir], ds.dir.parent))
    data.vocab_size = "${model.vocab_size}"
    root = OmegaConf.create({"model": {"vocab_size": VOCAB}, "data": data})
    assert prepare(root.data, verbose=False).dir == ds.dir  # same settings -> the cached dataset
    with pytest.raises(ConfigError, match=r"^data\.vocab_size cannot be resolved"):
        prepare(OmegaConf.create({"data": data}).data, verbose=False)


def test_the_cli_takes_hydra_overrides(ds, corpus_dir, capsys):
    overrides = [
        f"data.sources=[{corpus_dir}]",
        "data.name=fixture",
        f"data.cache_dir={ds.dir.parent}",
        f"model.vocab_size={VOCAB}",
        "data.val_fraction=0.1",
        "data.split_seed=7",
    ]
    assert cli_main(overrides) == 0
    out = capsys.readouterr().out
    assert str(ds.dir) in out and "bytes/token" in out and "48 work units" in out
    assert cli_main(["--sources", "x"]) == 2
    assert "is not an option of python -m research.data" in capsys.readouterr().err
    assert cli_main(["data.sourcez=[x]"]) == 2
    assert "did you mean data.sources" in capsys.readouterr().err


@pytest.mark.slow
def test_the_real_shakespeare_if_prepared():
    from research.config.schema import DataConfig
    from research.data import train_loader, val_batches

    cfg = DataConfig(name="shakespeare", sources=["shakespeare"], vocab_size=512)
    final, fp, _, _ = dataset_dir(cfg)
    if not (final / "meta.json").exists():
        pytest.skip(f"{final.name} is not prepared; run `make data` (python -m research.data) first")
    ds = prepare(cfg, verbose=False)  # a cache hit
    assert ds.dir == final and ds.fingerprint == fp
    m = ds.meta
    assert m["sources"][0]["source"] == "shakespeare" and m["splits"]["train"]["documents"] > 300
    assert 4.5e6 < m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"] < 5.5e6
    assert 1.3 < ds.bytes_per_token_val < 3.0 and 5.0 < ds.unigram_entropy_bits < math.log2(512)
    batch = next(train_loader(ds, seq_len=128, global_batch=8, seed=0))
    assert batch.shape == (8, 129) and batch.max() < 512
    assert len(ds.tokenizer().decode(val_batches(ds, seq_len=128, batch=8, n_batches=1)[0][0])) > 100
