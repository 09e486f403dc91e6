"""What a fit reads (analysis/points.py, selection.py): the project's summary.csv as it is, seeds averaged into one
point per configuration with their spread, a `tokens` column taken for D, C checked against 6 N D, and the
user's selection flags."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from analysis import AnalysisError, fit_source, load_points, select, write_summary


def record(sweep: Path, name: str, n: int, tokens: int, seed: int, loss: float, **extra) -> None:
    run = sweep / name
    run.mkdir(parents=True)
    config = {"model": {"name": f"m{n}"}, "train": {"seed": seed, "run_name": name, "tokens": tokens}, "sweep": {}}
    rec = {
        "status": "completed",
        "run_name": name,
        "params": n + 100,
        "params_nonembed": n,
        "tokens": tokens,
        "flops": 6 * n * tokens,
        "final_val_loss": loss,
        "config": config,
        **extra,
    }
    (run / "results.json").write_text(json.dumps(rec))


def seeded_sweep(root: Path) -> Path:
    """Four sizes at one D, two seeds each (losses 0.02 apart), and one failed run."""
    sweep = root / "sweep"
    for n in (1000, 2000, 4000, 8000):
        base = 4.0 * (n / 1000) ** -0.1
        record(sweep, f"n{n}", n, 10_000, 0, base - 0.01)
        record(sweep, f"n{n}-s1", n, 10_000, 1, base + 0.01)
    (sweep / "bad").mkdir()
    (sweep / "bad" / "results.json").write_text(json.dumps({"status": "failed", "error": "oom", "config": {}}))
    return sweep


def test_seeds_of_one_configuration_are_one_point(tmp_path):
    pts = load_points(seeded_sweep(tmp_path), need=("N",))
    assert len(pts) == 4 and list(pts.N) == [1000, 2000, 4000, 8000]
    assert list(pts.n_seeds) == [2, 2, 2, 2]
    np.testing.assert_allclose(pts.loss, 4.0 * (pts.N / 1000) ** -0.1)
    np.testing.assert_allclose(pts.seed_std, np.sqrt(2) * 0.01)  # two values 0.02 apart
    assert pts.pooled_seed_std == pytest.approx(np.sqrt(2) * 0.01)
    np.testing.assert_allclose(pts.stderr, 0.01)  # the pooled std / sqrt(2 seeds)
    assert [f["run_dir"] for f in pts.failed] == ["bad"]


def test_summary_csv_is_read_as_it_is_file_or_folder(tmp_path):
    sweep = seeded_sweep(tmp_path)
    path, columns, rows = write_summary(sweep)
    assert {"config_id", "seed"} <= set(columns)
    ids = {r["run_dir"]: r["config_id"] for r in rows}
    assert ids["n1000"] == ids["n1000-s1"] != ids["n2000"]
    by_dir = {r["run_dir"]: r for r in rows}
    assert by_dir["n1000"]["config_seeds"] == 2 and by_dir["bad"]["config_seeds"] == 0
    assert by_dir["n1000-s1"]["config_val_loss_mean"] == pytest.approx(4.0)
    assert by_dir["n1000"]["config_val_loss_std"] == pytest.approx(np.sqrt(2) * 0.01)
    only = tmp_path / "only_summary"
    only.mkdir()
    shutil.copy(path, only / "summary.csv")
    from_dir, from_file = load_points(sweep, need=("N", "D")), load_points(path, need=("N", "D"))
    from_folder = load_points(only, need=("N", "D"))
    for pts in (from_file, from_folder):
        np.testing.assert_allclose(pts.loss, from_dir.loss)
        np.testing.assert_allclose(pts.D, from_dir.D)
        assert list(pts.n_seeds) == [2, 2, 2, 2] and pts.columns["N"] == "params_nonembed"
        assert [f["status"] for f in pts.failed] == ["failed"]


def test_a_tokens_column_is_d_and_c_is_checked_against_6nd(tmp_path):
    path = tmp_path / "points.csv"
    rows = [(1e6, 2e7, 6 * 1e6 * 2e7), (2e6, 4e7, 6 * 2e6 * 4e7), (4e6, 8e7, 2.0 * 6 * 4e6 * 8e7)]
    path.write_text("N,tokens,C,loss\n" + "".join(f"{n},{d},{c},3.0\n" for n, d, c in rows))
    pts = load_points(path, need=("N", "D"))
    np.testing.assert_allclose(pts.D, [2e7, 4e7, 8e7])
    assert pts.columns["D"] == "tokens"
    (note,) = pts.notes
    assert note.startswith("C differs from 6 N D by more than 10% at 1 of 3 points (up to +100%)")


def test_selection_flags(tmp_path):
    path = tmp_path / "grid.csv"
    ns, ds = (1e6, 2e6, 4e6, 8e6), (1e7, 1e8, 1e9)
    lines = [f"{n},{d},{6 * n * d},{2 + 100 / n**0.3 + 300 / d**0.3}\n" for n in ns for d in ds]
    path.write_text("N,D,C,loss\n" + "".join(lines))
    pts = load_points(path)
    assert len(select(pts, min_compute=1e15)) == sum(6 * n * d >= 1e15 for n in ns for d in ds)
    assert len(select(pts, max_compute=1e14)) == sum(6 * n * d <= 1e14 for n in ns for d in ds)
    tpp = select(pts, tpp_range=(10, 200))
    assert all(10 <= d / n <= 200 for n, d in zip(tpp.N, tpp.D, strict=True))
    assert set(select(pts, budgets=[6e13, 6e15]).C) == {6e13, 6e15}
    kept = select(pts, exclude=["row 2", "row 3"])
    assert len(kept) == len(pts) - 2 and "selection: 2 point(s) excluded by --exclude." in kept.notes
    with pytest.raises(AnalysisError, match="--exclude names row 99, which is not a run"):
        select(pts, exclude=["row 99"])
    with pytest.raises(AnalysisError, match="the selection leaves no point"):
        select(pts, min_compute=1e30)


def test_fit_weights_points_and_redraws_them_from_their_seed_noise(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_source(seeded_sweep(tmp_path), "kaplan_n", bootstrap=200)
    assert fit["valid"] and fit["params"]["alpha_N"] == pytest.approx(0.1, abs=1e-6)
    assert fit["noise"]["configurations"] == 4 and fit["noise"]["runs"] == 8
    assert fit["noise"]["pooled_seed_std"] == pytest.approx(np.sqrt(2) * 0.01)
    assert fit["bootstrap"]["resampling"].startswith("parametric")
    assert fit["objective"]["reduction"] == "sum over points, each weighted by its precision"
    lo, hi = fit["intervals"]["alpha_N"]
    assert lo < 0.1 < hi and hi - lo < 0.05


def test_summary_rows_name_config_and_seed(tmp_path):
    sweep = seeded_sweep(tmp_path)
    path, _, _ = write_summary(sweep)
    with path.open() as fh:
        seeds = {row["run_dir"]: row["seed"] for row in csv.DictReader(fh)}
    assert seeds["n1000"] == "0" and seeds["n1000-s1"] == "1" and seeds["bad"] == ""
