"""Training runs on the new data paths: a weighted mixture with validation loss per source (metrics.jsonl,
TensorBoard, results.json), and an existing Hugging Face tokenizer.json end to end."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_overrides, train_in_process
from data_corpus import hf_tokenizer_json

from research.metrics import read_jsonl


def test_a_weighted_mixture_reports_validation_loss_per_source(tmp_path, corpus_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a, b = corpus_dir / "macbeth_1.txt", corpus_dir / "macbeth_[2-5].txt"
    mixture = f"data.sources=[{{source:{a},weight:1,name:act1}},{{source:'{b}',weight:3,name:rest}}]"
    run = tmp_path / "run"
    record = train_in_process(run, tiny_overrides(corpus_dir, tmp_path / "data", mixture, "data.val_fraction=0.4"))
    assert record["status"] == "completed"
    meta = json.loads(next((tmp_path / "data").glob("fixture-*/meta.json")).read_text())
    with_val = [s["source"] for s in meta["sources"] if s["val_tokens"]]
    assert with_val and set(with_val) <= {"act1", "rest"}
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r]
    assert rows and all(f"val_loss/{name}" in r and f"val_bpb/{name}" in r for r in rows for name in with_val)
    results = json.loads((run / "results.json").read_text())
    assert set(results["val_loss_by_source"]) == set(with_val) == set(results["val_bpb_by_source"])
    assert results["val_loss_by_source"][with_val[0]] == pytest.approx(rows[-1][f"val_loss/{with_val[0]}"])
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {f"val_loss/{name}" for name in with_val} <= set(acc.Tags()["scalars"])


def test_a_run_with_an_existing_tokenizer_json(tmp_path, corpus_dir):
    path = hf_tokenizer_json(tmp_path / "tokenizer.json", corpus_dir, vocab=380)
    run = tmp_path / "run"
    overrides = tiny_overrides(corpus_dir, tmp_path / "data", f"data.tokenizer={path}", "train.steps=40")
    record = train_in_process(run, overrides)
    assert record["status"] == "completed"
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # it learns from these tokens
    assert record["val_bpb"] == pytest.approx(
        record["final_val_loss"] / 0.6931471805599453 / _bytes_per_token(tmp_path)
    )


def _bytes_per_token(tmp_path) -> float:
    meta = json.loads(next((tmp_path / "data").glob("fixture-*/meta.json")).read_text())
    assert meta["tokenizer"] == "tokenizer.json"
    return meta["bytes_per_token_val"]
