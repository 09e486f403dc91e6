"""End to end through the CLI: a fake sweep directory in the record format of docs/architecture.md is read, summarised
and fitted by `python -m analysis` in a subprocess; the reference CSV fit writes the published numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from analysis import fit_source

ROOT = Path(__file__).resolve().parents[2]
LAW = {"E": 2.0, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
SIZES = [1e5, 2e5, 4e5, 8e5, 1.6e6]
BUDGETS = [1e13, 3e13, 1e14]


def _loss(n: float, d: np.ndarray | float) -> np.ndarray:
    return LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / np.asarray(d) ** LAW["beta"]


def make_sweep(root: Path) -> Path:
    """An IsoFLOP sweep of 15 completed runs (records as docs/architecture.md fixes them), one failed, one killed."""
    rng = np.random.default_rng(0)
    sweep = root / "runs" / "fake_sweep"
    for c in BUDGETS:
        for n in SIZES:
            tokens = int(c / (6 * n))
            run = sweep / f"n{int(n)}_c{c:.0e}"
            run.mkdir(parents=True)
            steps, batch_tokens = 40, max(1, tokens // 40)
            with (run / "metrics.jsonl").open("w") as fh:
                for step in range(1, steps + 1):
                    t = step * batch_tokens
                    row = {
                        "step": step,
                        "tokens": t,
                        "flops": 6 * n * t,
                        "loss": float(_loss(n, t)) * (1 + rng.normal(0, 0.003)),
                        "lr": 1e-3,
                        "grad_norm": 1.0,
                        "tokens_per_second": 1e5,
                        "mfu": 0.1,
                    }
                    fh.write(json.dumps(row) + "\n")
                    if step % 20 == 0:
                        fh.write(json.dumps({**row, "val_loss": row["loss"], "val_bpb": 1.0}) + "\n")
            final = float(_loss(n, tokens)) * (1 + rng.normal(0, 0.002))
            (run / "results.json").write_text(
                json.dumps(
                    {
                        "status": "completed",
                        "experiment": "fake_sweep",
                        "run_name": run.name,
                        "model": "nano",
                        "params": int(n) + 4096,
                        "params_nonembed": int(n),
                        "params_embed": 4096,
                        "tokens": tokens,
                        "steps": steps,
                        "batch_tokens": batch_tokens,
                        "seq_len": 64,
                        "flops": 6 * n * tokens,
                        "flops_model": 6.2 * n * tokens,
                        "final_train_loss": final * 0.99,
                        "final_val_loss": final,
                        "val_bpb": final / np.log(2),
                        "tokens_per_second": 1e5,
                        "mfu": 0.1,
                        "wall_seconds": 3.0,
                        "device": "cpu",
                        "n_devices": 1,
                        "config": {"model": {"n_layer": 2}},
                        "git_sha": "abc123",
                    }
                )
            )
    failed = sweep / "n3200000_oom"
    failed.mkdir()
    (failed / "results.json").write_text(
        json.dumps({"status": "failed", "run_name": failed.name, "error": "out of memory", "config": {}})
    )
    killed = sweep / "n100000_killed"
    killed.mkdir()
    (killed / "metrics.jsonl").write_text(json.dumps({"step": 1, "tokens": 10, "flops": 6e6, "loss": 5.0}) + "\n")
    return sweep


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analysis", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweep"))


def test_summary_prints_and_writes_one_row_per_run(sweep):
    proc = run_cli("summary", str(sweep))
    assert proc.returncode == 0, proc.stderr
    with (sweep / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 17
    status = {r["run_dir"]: r["status"] for r in rows}
    assert status["n3200000_oom"] == "failed" and status["n100000_killed"] == "no_results"
    assert sum(s == "completed" for s in status.values()) == 15
    assert "config" not in rows[0] and "final_val_loss" in rows[0]  # scalar fields only
    assert "FAILED" in proc.stdout and "15 completed" in proc.stdout


def test_fit_chinchilla_on_sweep_with_holdout(sweep, tmp_path):
    out = tmp_path / "fit"
    proc = run_cli(
        "fit",
        str(sweep),
        "--law",
        "chinchilla",
        "--out",
        str(out),
        "--bootstrap",
        "100",
        "--holdout-largest",
        "1",
        "--compute",
        "1e15",
    )
    assert proc.returncode == 0, proc.stderr
    fit = json.loads((out / "fit.json").read_text())
    assert fit["law"] == "chinchilla" and set(fit["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert fit["n_points"] == 15 and fit["columns"]["N"] == "params_nonembed"
    assert {r["run_dir"] for r in fit["failed_runs"]} == {"n3200000_oom", "n100000_killed"}
    assert fit["params"]["E"] == pytest.approx(LAW["E"], rel=0.1)
    assert set(fit["stderr"]) >= {"E", "A", "B", "alpha", "beta", "a", "b", "tokens_per_param@1e+15"}
    assert fit["bootstrap"]["n"] == 100 and "best full-data fit" in fit["bootstrap"]["start"]
    pred = fit["prediction"]  # the largest budget held out whole: its five runs
    assert len(pred["points"]) == 5 and abs(pred["mean_abs_relative_error"]) < 0.05
    assert {row["name"] for row in fit["holdout"]} == {f"n{int(n)}_c1e+14" for n in SIZES}
    assert all(set(row) >= {"name", "predicted", "measured", "error_pct", "inside_interval"} for row in fit["holdout"])
    assert fit["valid"] and fit["reasons"] == [] and fit["summary"].startswith("Loss falls as N^-")
    for name in ("loss_vs_N", "loss_vs_C", "residuals", "optimal_allocation", "prediction"):
        assert (out / f"{name}.png").stat().st_size > 5000 and (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF", name


@pytest.mark.parametrize("law", ["isoflop", "envelope"])
def test_fit_compute_optimal_approaches_on_sweep(sweep, tmp_path, law):
    out = tmp_path / law
    proc = run_cli("fit", str(sweep), "--law", law, "--out", str(out), "--bootstrap", "100")
    assert proc.returncode == 0, proc.stderr
    fit = json.loads((out / "fit.json").read_text())
    assert fit["law"] == law and set(fit["params"]) == {"a", "b", "k_N", "k_D"}
    assert fit["figures"] and all((out / f).exists() for f in fit["figures"])
    # Five sizes: IsoFLOP vertices are interpolated, the envelope only picks among sizes (coarse).
    expected = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    assert fit["params"]["a"] == pytest.approx(expected, abs=0.1 if law == "isoflop" else 0.25)
    assert "tokens_per_param@5.88e+23" in fit["derived"] and "a" in fit["stderr"]
    if law == "isoflop":
        assert len(fit["budgets"]) == 3 and (out / "isoflop.png").exists()
    else:
        assert fit["n_rows"] == 15  # curves of the completed runs only


@pytest.mark.parametrize("law", ["kaplan_n", "kaplan_c"])
def test_fit_kaplan_laws_on_sweep(sweep, tmp_path, law):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_source(sweep, law, tmp_path, bootstrap=50)
    assert fit["law"] == law and fit["n_rows"] == 15
    assert fit["n_points"] == 5 if law == "kaplan_n" else 3 <= fit["n_points"] <= 15
    assert 0 < fit["params"][f"alpha_{law[-1].upper()}"] < 1
    assert fit["data_selection"].startswith("lowest loss" if law == "kaplan_n" else "the compute frontier")
    assert all((tmp_path / f).exists() for f in fit["figures"])


def test_cli_error_is_one_clear_sentence(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("N,loss\n1e6,3.0\n2e6,2.9\n")
    proc = run_cli("fit", str(bad), "--law", "chinchilla", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'D'" in lines[0] and lines[0].endswith(".")
