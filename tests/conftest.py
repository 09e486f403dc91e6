"""Shared fixtures: a small real-text corpus and a helper that trains a tiny model in-process."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = FIXTURES / "corpus"  # a few public-domain Shakespeare scenes, one document per file


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    assert CORPUS.is_dir() and any(CORPUS.glob("*.txt")), f"missing test corpus under {CORPUS}"
    return CORPUS


def compose(overrides: list[str]):
    """Compose the real Hydra config tree (conf/) with overrides, as the entry points do."""
    from research.config.hydra import compose as compose_config

    return compose_config(overrides)


def tiny_overrides(corpus: Path, cache: Path, *extra: str) -> list[str]:
    """A model and budget that train in seconds on the fixture corpus."""
    return [
        "model=nano_xs",
        "model.vocab_size=384",
        f"data.sources=[{corpus}]",
        "data.name=fixture",
        f"data.cache_dir={cache}",
        "data.val_fraction=0.2",
        "train.batch_size=8",
        "train.seq_len=64",
        "train.tokens=null",
        "train.steps=30",
        "train.log_every=5",
        "train.eval_every=15",
        "train.eval_batches=2",
        "train.checkpoint_every=10",
        "train.progress=false",
        *extra,
    ]


def train_in_process(run_dir: Path, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from research.config.hydra import to_config
    from research.train.loop import run

    cfg = compose(overrides)
    return run(to_config(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True))
