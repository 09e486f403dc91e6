"""One tiny trained run shared by the sampling and export tests (trained once per pytest process)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_overrides, train_in_process


def tiny_run(tmp_path_factory, corpus_dir: Path) -> Path:
    """A completed nano_xs run on the fixture corpus with a checkpoint (reused when already there)."""
    base = tmp_path_factory.getbasetemp() / "tiny_trained_run"
    run_dir = base / "run"
    results = run_dir / "results.json"
    if not (results.is_file() and json.loads(results.read_text()).get("status") == "completed"):
        extra = ("train.steps=20", "train.eval_every=20", "train.checkpoint_every=20")
        train_in_process(run_dir, tiny_overrides(corpus_dir, base / "data", *extra))
    return run_dir
