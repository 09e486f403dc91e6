"""Preparation at scale, in small: kill -9 mid-way and rerun gives the same bytes; so do 2 workers and
submitit's local executor (the engine of `data.executor=slurm`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from research.config.schema import DataConfig
from research.data import prepare
from research.data.synthetic import write_jsonl

UNITS = 16  # 1 MB work units of a 16 MB corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return Path(write_jsonl(tmp_path_factory.mktemp("syn") / "corpus.jsonl", UNITS << 20, seed=0)["path"])


def cfg(corpus: Path, cache: Path, **kw) -> DataConfig:
    base = dict(
        name="syn",
        sources=[str(corpus)],
        cache_dir=str(cache),
        vocab_size=512,
        unit_mb=1,
        tokenizer_sample_mb=2,
        workers=1,
    )
    return DataConfig(**{**base, **kw})


def dataset_bytes(d: Path) -> dict[str, bytes]:
    """Every file of a prepared dataset that must not depend on how it was made (meta.json has times)."""
    return {
        str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "meta.json"
    }


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    ds = prepare(cfg(corpus, tmp_path_factory.mktemp("ref")), verbose=False)
    assert len(ds.manifest["units"]) >= UNITS
    return ds


def test_kill_9_mid_preparation_then_rerun_gives_identical_shards(corpus, reference, tmp_path):
    cache = tmp_path / "cache"
    overrides = [f"data.sources=[{corpus}]", "data.name=syn", f"data.cache_dir={cache}", "model.vocab_size=512"]
    overrides += ["data.unit_mb=1", "data.tokenizer_sample_mb=2", "data.workers=1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "research.data", *overrides],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    final = cache / reference.dir.name
    deadline = time.time() + 120
    while time.time() < deadline and len(list((final / "shards").glob("unit-*.json"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((final / "shards").glob("unit-*.json")))
    assert 4 <= finished < len(reference.manifest["units"]) and not (final / "meta.json").exists()
    again = prepare(cfg(corpus, cache), verbose=False)
    assert again.dir == final
    assert dataset_bytes(final) == dataset_bytes(reference.dir)
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]


def test_two_workers_give_the_same_bytes_as_one(corpus, reference, tmp_path):
    two = prepare(cfg(corpus, tmp_path, workers=2), verbose=False)
    assert dataset_bytes(two.dir) == dataset_bytes(reference.dir)


def test_submitit_local_executor_gives_the_same_bytes(tmp_path):
    small = Path(write_jsonl(tmp_path / "small.jsonl", 3 << 20, seed=1)["path"])
    local = prepare(cfg(small, tmp_path / "local"), verbose=False)
    via = prepare(cfg(small, tmp_path / "submitit", executor="submitit_local"), verbose=False)
    assert len(via.manifest["units"]) >= 3
    assert dataset_bytes(via.dir) == dataset_bytes(local.dir)
    assert not (via.dir / "jobs").exists()  # submitit's logs are removed once the dataset is complete
