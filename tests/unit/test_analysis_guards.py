"""The validity guards (analysis/guards.py) on constructed data: each refusal is one sentence naming its cause and
fix, --force fits anyway and marks the result invalid, and edge IsoFLOP minima are left out and listed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from analysis import AnalysisError, fit_source
from analysis.guards import bootstrap_reasons


def one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith("."), message


def write_csv(path: Path, rows: list[dict]) -> Path:
    keys = list(rows[0])
    path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows))
    return path


def chinchilla_loss(n, d):
    return 1.8 + 400.0 / np.asarray(n) ** 0.34 + 2000.0 / np.asarray(d) ** 0.37


def ladder(tmp_path: Path, d: float = 2.5e6) -> Path:
    """Seven sizes at one D, as the old default sweep (and cpu_ladder) measure them."""
    sizes = np.geomspace(2e3, 9e4, 7)
    rows = [{"N": n, "D": d, "loss": float(chinchilla_loss(n, d))} for n in sizes]
    return write_csv(tmp_path / "ladder.csv", rows)


def refusal(source: Path, law: str, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AnalysisError) as err:
            fit_source(source, law, bootstrap=50, **kw)
    one_sentence(str(err.value))
    return str(err.value)


def test_a_law_in_d_is_refused_when_d_never_varies(tmp_path):
    message = refusal(ladder(tmp_path), "chinchilla")
    assert message.startswith("D does not vary in the selected points (every one has D = 2.5e+06 tokens)")
    assert "fit --law kaplan_n --irreducible" in message and "--force fits anyway" in message
    assert "D does not vary" in refusal(ladder(tmp_path), "kaplan_d")


def test_kaplan_c_at_one_d_is_named_a_relabelled_kaplan_n(tmp_path):
    message = refusal(ladder(tmp_path), "kaplan_c")
    assert "C is proportional to N" in message and "kaplan_c is kaplan_n relabelled" in message


def test_n_and_d_in_lockstep_cannot_be_separated(tmp_path):
    rows = [{"N": n, "D": 20 * n, "loss": float(chinchilla_loss(n, 20 * n))} for n in np.geomspace(1e6, 1e9, 9)]
    assert "log D moves in lockstep with log N" in refusal(write_csv(tmp_path / "tpp20.csv", rows), "chinchilla")


def test_too_few_points_for_the_checks(tmp_path):
    rng = np.random.default_rng(0)
    n, d = np.exp(rng.uniform(np.log(1e6), np.log(1e9), 6)), np.exp(rng.uniform(np.log(1e8), np.log(1e11), 6))
    rows = [{"N": a, "D": b, "loss": float(chinchilla_loss(a, b))} for a, b in zip(n, d, strict=True)]
    message = refusal(write_csv(tmp_path / "six.csv", rows), "chinchilla")
    assert "law chinchilla has 5 parameters but the selection gives only 6 points; a fit needs at least 7" in message


def test_irreducible_loss_above_the_data_is_refused(tmp_path):
    sizes = np.geomspace(1e3, 1e6, 12)
    loss = 3.0 + 40.0 / sizes**0.5
    loss[-1] = 2.5  # one run far below the floor the others follow
    rows = [{"N": n, "D": 1e6, "loss": float(v)} for n, v in zip(sizes, loss, strict=True)]
    message = refusal(write_csv(tmp_path / "e.csv", rows), "kaplan_n", irreducible=True)
    assert (
        message.startswith("the fitted irreducible loss E = ") and "lies above the lowest measured loss 2.5" in message
    )


def test_an_exponent_of_impossible_sign_is_refused(tmp_path):
    sizes = np.geomspace(1e3, 1e6, 8)
    rows = [{"N": n, "D": 1e6, "loss": float(2.0 * (n / 1e3) ** 0.02)} for n in sizes]  # loss grows with N
    message = refusal(write_csv(tmp_path / "up.csv", rows), "kaplan_n")
    assert "the fitted exponent alpha_N = -0.02 is not positive" in message


def test_residuals_far_above_the_measured_seed_noise(tmp_path):
    """Two seeds per size agree to 0.1%, but the losses zig-zag by 3%: no power law describes them."""
    sizes = np.geomspace(1e3, 1e6, 10)
    base = 2.0 * (sizes / 1e3) ** -0.1 * (1 + 0.03 * (-1) ** np.arange(10))
    rows = [
        {"N": n, "D": 1e6, "seed": s, "loss": float(v * (1 + 0.001 * (2 * s - 1)))}
        for n, v in zip(sizes, base, strict=True)
        for s in (0, 1)
    ]
    message = refusal(write_csv(tmp_path / "zigzag.csv", rows), "kaplan_n")
    assert "the fit's residuals (RMS" in message and "x the measured noise of the points" in message


def test_unconverged_bootstrap_is_a_reason():
    (reason,) = bootstrap_reasons(1000, 831)
    assert reason.startswith("only 831 of 1000 bootstrap refits converged (83%, below 95%)")
    assert bootstrap_reasons(1000, 990) == []


def test_force_fits_and_marks_every_output_invalid(tmp_path):
    out = tmp_path / "fit"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AnalysisError):
            fit_source(ladder(tmp_path), "chinchilla", out, bootstrap=20)
        refused = json.loads((out / "fit.json").read_text())
        assert refused["valid"] is False and refused["refused"] and "params" not in refused
        assert refused["reasons"][0].startswith("D does not vary")
        forced = fit_source(ladder(tmp_path), "chinchilla", out, bootstrap=20, force=True)
    on_disk = json.loads((out / "fit.json").read_text())
    assert on_disk["valid"] is False and on_disk["forced"] and on_disk["reasons"] == forced["reasons"]
    assert on_disk["summary"] is None and set(on_disk["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert on_disk["figures"] and all((out / f).stat().st_size > 5000 for f in on_disk["figures"])


def test_a_refusal_removes_the_figures_of_an_earlier_fit_in_the_same_folder(tmp_path):
    out = tmp_path / "fit"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forced = fit_source(ladder(tmp_path), "chinchilla", out, bootstrap=20, force=True)
        assert all((out / f).exists() for f in forced["figures"] + forced["figures_pdf"])
        too_few = write_csv(
            tmp_path / "two.csv", [{"N": 1e6, "D": 1e9, "loss": 3.0}, {"N": 2e6, "D": 1e9, "loss": 2.9}]
        )
        with pytest.raises(AnalysisError, match="gives only 2 usable points"):
            fit_source(too_few, "kaplan_n", out, bootstrap=20)
    refused = json.loads((out / "fit.json").read_text())
    assert refused["refused"] and refused["valid"] is False and "gives only 2 usable points" in refused["reasons"][0]
    assert not list(out.glob("*.png")) and not list(out.glob("*.pdf"))


def isoflop_rows(shift_last: float) -> list[dict]:
    """Exact parabolas in log N around N_opt = 0.1 C^0.5; the last budget's sizes shifted below its minimum."""
    rows = []
    budgets = 1e18 * 10 ** (np.arange(5) / 2)
    for k, c in enumerate(budgets):
        x = np.log(0.1 * c**0.5) + np.linspace(-0.6, 0.6, 5) * np.log(10) + (shift_last if k == 4 else 0.0)
        for n in np.exp(x):
            rows.append({"N": n, "C": c, "loss": 3.0 - 0.1 * k + 0.05 * (np.log(n) - np.log(0.1 * c**0.5)) ** 2})
    return rows


def test_isoflop_minima_outside_the_sampled_sizes_are_left_out_and_listed(tmp_path):
    path = write_csv(tmp_path / "iso.csv", isoflop_rows(-1.5 * np.log(10)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_source(path, "isoflop", bootstrap=100)
        kept = fit_source(path, "isoflop", bootstrap=100, keep_edge_minima=True)
    assert fit["valid"] and fit["n_points"] == 4 and len(fit["budgets"]) == 5
    (edge,) = fit["edge_minima"]
    assert edge["C"] == pytest.approx(1e20) and not edge["used"] and not edge["vertex_inside_sampled_sizes"]
    assert any("left out of N_opt(C)" in w for w in fit["warnings"])
    assert fit["params"]["a"] == pytest.approx(0.5, abs=1e-6)
    lo, hi = fit["intervals"]["a"]
    assert lo <= fit["params"]["a"] <= hi  # point estimate and bootstrap see the same budgets
    assert kept["n_points"] == 5 and any("kept (--keep-edge-minima)" in w for w in kept["warnings"])
