"""Synthetic data with known parameters: every law is fitted back, approaches give the known exponent,
and the prediction check reports the error that was put in."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import approaches
from analysis.fit import fit_law, summarize_samples
from analysis.laws import get_law
from analysis.points import Points
from analysis.predict import predict_holdout
from analysis.results import Curve
from analysis.selection import select_points

TRUE = {
    "chinchilla": {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37},
    "kaplan_n": {"N_c": 8.8e13, "alpha_N": 0.076},
    "kaplan_n+E": {"E": 1.7, "A": 300.0, "alpha_N": 0.3},
    "kaplan_c": {"C_c": 3.1e8 * 8.64e19, "alpha_C": 0.050},
    "kaplan_d": {"D_c": 5.4e13, "alpha_D": 0.095},
    "kaplan_nd": {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103},
}


def _synthetic(name: str, n: int = 60, sigma: float = 0.005, seed: int = 0) -> Points:
    """Points from the named law with log-normal noise of scale sigma."""
    rng = np.random.default_rng(seed)
    law = get_law(name.split("+")[0], irreducible=name.endswith("+E"))
    big_n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
    big_d = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    if name == "kaplan_c":
        big_n = np.geomspace(1e6, 1e10, n)  # frontier-like: loss falls steadily with compute
        big_d = 20 * big_n
    c = 6 * big_n * big_d
    loss = law.predict(TRUE[name], **{"N": big_n, "D": big_d, "C": c})
    return Points(loss * np.exp(rng.normal(0, sigma, n)), big_n, big_d, c, [f"p{i}" for i in range(n)], "synthetic")


@pytest.mark.parametrize("name", list(TRUE))
def test_recovers_known_parameters_within_bootstrap_interval(name):
    law = get_law(name.split("+")[0], irreducible=name.endswith("+E"))
    pts = select_points(_synthetic(name), law.name)
    logx = np.log(np.stack([pts.get(v) for v in law.variables]))
    fit = fit_law(law, logx, pts.loss, bootstrap=300, seed=1)
    _, intervals = summarize_samples(fit.boot_params())
    for param, true in TRUE[name].items():
        lo, hi = intervals[param]
        assert lo <= true <= hi, f"{name} {param}: true {true} outside [{lo}, {hi}] (fit {fit.params[param]})"
        assert fit.params[param] == pytest.approx(true, rel=0.3)


def _isoflop_points(vertex_shift: float = 0.0) -> tuple[Points, np.ndarray]:
    """Exact parabolas in log N with vertices N_opt = 0.1 C^0.5; the last budget's sizes can be shifted away."""
    budgets = 1e18 * 10 ** (np.arange(6) / 2)
    rows_n, rows_c, rows_l = [], [], []
    for k, c in enumerate(budgets):
        n_opt = 0.1 * c**0.5
        offsets = np.linspace(-0.6, 0.6, 7) * np.log(10)
        if k == len(budgets) - 1:
            offsets = offsets + vertex_shift
        x = np.log(n_opt) + offsets
        rows_n.append(np.exp(x))
        rows_c.append(np.full(7, c))
        rows_l.append(3.0 - 0.1 * k + 0.05 * (x - np.log(n_opt)) ** 2)
    n, c, loss = (np.concatenate(r) for r in (rows_n, rows_c, rows_l))
    return Points(loss, n, c / (6 * n), c, [f"r{i}" for i in range(len(n))], "synthetic isoflop"), budgets


def test_isoflop_recovers_known_exponent():
    pts, budgets = _isoflop_points()
    alloc = approaches.isoflop(pts, bootstrap=200, seed=0)
    assert len(alloc.groups) == len(budgets)
    np.testing.assert_allclose(alloc.n_opt, 0.1 * budgets**0.5, rtol=1e-8)
    assert alloc.a == pytest.approx(0.5, abs=1e-8)
    assert alloc.b == pytest.approx(0.5, abs=1e-8)
    assert alloc.params["k_N"] == pytest.approx(0.1, rel=1e-6)
    assert all(g.inside for g in alloc.groups)


def test_isoflop_warns_when_vertex_outside_sampled_sizes():
    pts, _ = _isoflop_points(vertex_shift=-1.0 * np.log(10))  # last budget samples only sizes below its optimum
    with pytest.warns(approaches.ExtrapolationWarning, match="outside the sampled sizes"):
        alloc = approaches.isoflop(pts)
    assert not alloc.groups[-1].inside
    assert alloc.a == pytest.approx(0.5, abs=1e-6)  # exact parabolas still extrapolate to the right vertex


def test_envelope_recovers_allocation_exponent():
    """Learning curves L(N, D(t)) with small log-normal noise: the envelope's slope is beta / (alpha + beta)."""
    p = TRUE["chinchilla"]
    law = get_law("chinchilla")
    rng = np.random.default_rng(0)
    curves = []
    for n in np.geomspace(1e6, 1e9, 40):
        tokens = np.geomspace(1e6, 1e12, 200)
        loss = law.predict(p, N=n, D=tokens) * np.exp(rng.normal(0, 0.002, tokens.size))
        curves.append(Curve(f"N={n:.2g}", float(n), 6 * n * tokens, tokens, loss))
    alloc = approaches.envelope(curves, n_budgets=60, bootstrap=300, seed=0)
    expected = p["beta"] / (p["alpha"] + p["beta"])
    # N_opt only takes the sampled sizes (0.075 decades apart): the slope is known to about that over ~5 decades.
    assert alloc.a == pytest.approx(expected, abs=0.03)
    assert alloc.b == pytest.approx(1 - expected, abs=0.03)
    _, intervals = summarize_samples(alloc.boot)
    assert intervals["a"][0] <= alloc.a <= intervals["a"][1]


def test_envelope_warns_when_its_winners_are_steps_of_runs_not_yet_annealed():
    """Each run decays its learning rate over its own length (cosine to 10%): most budgets are won mid-run."""
    p = TRUE["chinchilla"]
    law = get_law("chinchilla")
    curves = []
    for n in np.geomspace(1e6, 1e9, 12):
        tokens = np.geomspace(1e6, 1e12, 200)
        lr = 1e-4 + 0.9e-3 * 0.5 * (1 + np.cos(np.pi * np.arange(200) / 199))
        curves.append(Curve(f"N={n:.2g}", float(n), 6 * n * tokens, tokens, law.predict(p, N=n, D=tokens), lr))
    (note,) = [w for w in approaches.envelope(curves).warnings if "had not decayed" in w]
    assert note.endswith("or use --law isoflop on run ends.") and int(note.split("%")[0]) > 50
    annealed = [Curve(c.name, c.N, c.flops, c.tokens, c.loss, np.full(200, 1e-4)) for c in curves]
    assert not [w for w in approaches.envelope(annealed).warnings if "had not decayed" in w]


def test_prediction_check_reports_expected_error():
    """Noise-free L(N, D) data whose 3 largest compute budgets measured 2% above the law: the check holds out every
    point of those budgets (two runs 1% apart in compute are one budget) and reports -1.96%."""
    pts = _synthetic("chinchilla", n=40, sigma=0.0)
    labels = approaches.group_budgets(pts.C, 0.02)
    held = np.flatnonzero(np.isin(labels, np.unique(labels)[-3:]))
    assert len(held) == 4  # the 4th and 5th largest runs lie 0.005 decades apart: one budget
    offset = 1.02
    pts.loss[held] *= offset
    law = get_law("chinchilla")
    report, _ = predict_holdout(pts, "chinchilla", law, 3, bootstrap=100, seed=0, delta=1e-3, level=0.95)
    assert report["holdout_largest"] == 3 and report["n_train_points"] == 36
    assert {row["run"] for row in report["points"]} == {pts.names[i] for i in held}
    for row in report["points"]:
        assert row["relative_error"] == pytest.approx(1 / offset - 1, abs=1e-3)
        assert row["predicted"] == pytest.approx(row["actual"] / offset, rel=1e-3)
        assert not row["within_interval"]  # noise-free training data: a tight interval that excludes +2%
    assert report["mean_abs_relative_error"] == pytest.approx(1 - 1 / offset, abs=1e-3)
    for name, true in TRUE["chinchilla"].items():
        assert report["train_params"][name] == pytest.approx(true, rel=1e-3)
