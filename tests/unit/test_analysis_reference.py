"""`python -m analysis fit` on the Epoch replication's 240 Chinchilla points (analysis/reference) reproduces the
published best grid fit, the bootstrap standard errors and the implied exponents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "analysis" / "reference" / "chinchilla_epoch_240.csv"
PUBLISHED = {"A": 477.84, "B": 2143.86, "E": 1.8172, "alpha": 0.34731, "beta": 0.36718}
PUBLISHED_SE = {"A": 124.52, "B": 1293.28, "E": 0.026, "alpha": 0.015, "beta": 0.021}


@pytest.fixture(scope="module")
def reference_fit(tmp_path_factory) -> tuple[dict, Path]:
    """The full 4,500-start grid and the published 4,000 resamples, through the CLI (about 10-20 s)."""
    out = tmp_path_factory.mktemp("reference_fit")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            "fit",
            str(CSV),
            "--law",
            "chinchilla",
            "--out",
            str(out),
            "--bootstrap",
            "4000",
            "--seed",
            "0",
            "--compute",
            "5.88e23",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "fit.json").read_text()), out


def test_grid_fit_reproduces_published_parameters(reference_fit):
    fit, _ = reference_fit
    assert fit["n_points"] == 240 and fit["fit"]["n_starts"] == 4500
    assert fit["objective"]["delta"] == 1e-3 and fit["objective"]["reduction"] == "sum over points"
    for name, published in PUBLISHED.items():
        got = fit["params"][name]
        assert got == pytest.approx(published, rel=5e-3), f"{name}: {got} vs published {published}"


def test_bootstrap_standard_errors_match_published(reference_fit):
    fit, _ = reference_fit
    assert fit["bootstrap"]["n"] == 4000 and fit["bootstrap"]["n_converged"] >= 3900
    for name, published in PUBLISHED_SE.items():
        se = fit["stderr"][name]
        assert se == pytest.approx(published, rel=0.2), f"SE {name}: {se} vs published {published}"
        lo, hi = fit["intervals"][name]
        assert lo < fit["params"][name] < hi


def test_implied_exponents_and_tokens_per_parameter(reference_fit):
    fit, _ = reference_fit
    assert fit["derived"]["a"] == pytest.approx(0.51, abs=0.01)
    assert fit["derived"]["b"] == pytest.approx(0.49, abs=0.01)
    assert fit["derived"]["tokens_per_param@5.88e+23"] == pytest.approx(18.0, abs=1.0)  # README: "about 18"
    assert fit["stderr"]["a"] > 0 and "tokens_per_param@5.88e+23" in fit["intervals"]


def test_figures_written(reference_fit):
    fit, out = reference_fit
    assert set(fit["figures"]) >= {"loss_vs_N.png", "loss_vs_C.png", "residuals.png", "optimal_allocation.png"}
    for name in fit["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
