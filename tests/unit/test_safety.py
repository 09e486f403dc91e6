"""What a run may read: nothing unpickles, restores stay inside the run directory (research/safety.py), harmless config differences."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from research.errors import ConfigError
from research.train import records


def test_config_differences_ignore_harmless_settings():
    old = {"train": {"progress": True, "log_every": 10, "nan_policy": "skip", "batch_size": 8}, "model": {"n_layer": 2}}
    new = {
        "train": {"progress": False, "log_every": 5, "nan_policy": "rollback", "batch_size": 8},
        "model": {"n_layer": 2},
        "extra": 1,
    }
    assert records.config_differences(old, new) == []
    new["model"]["n_layer"] = 3
    assert records.config_differences(old, new) == ["model.n_layer: 2 -> 3"]


UNSAFE = [
    (r"\bpickle\.loads?\(", "unpickling"),
    (r"\b(cloudpickle|dill|joblib)\.load", "unpickling"),
    (r"allow_pickle\s*=\s*True", "numpy pickles"),
    (r"\byaml\.(load|unsafe_load|full_load)\(", "unsafe YAML"),
    (r"\btorch\.load\(", "torch pickles"),
    (r"\bmarshal\.loads?\(", "marshal"),
]


def test_nothing_unpickles_or_loads_unsafe_yaml():
    offenders = []
    for folder in ("research", "experiments", "analysis"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            for pattern, what in UNSAFE:
                for match in re.finditer(pattern, text):
                    offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)} ({what})")
    assert offenders == []


def test_restore_reads_only_inside_the_run_directory(tmp_path):
    from research import safety

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "10").mkdir(parents=True)
    (tmp_path / "outside" / "checkpoints" / "10").mkdir(parents=True)
    assert safety.resolve_resume_source("checkpoints", run_dir, False) == (run_dir / "checkpoints").resolve()
    with pytest.raises(ConfigError, match="is outside the run directory"):
        safety.resolve_resume_source(str(tmp_path / "outside"), run_dir, False)
    with pytest.raises(ConfigError, match="is outside the run directory"):  # '..' does not get out either
        safety.resolve_resume_source("../outside", run_dir, False)
    assert (
        safety.resolve_resume_source(str(tmp_path / "outside"), run_dir, True)
        == (tmp_path / "outside" / "checkpoints").resolve()
    )
