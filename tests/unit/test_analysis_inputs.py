"""Reading records and CSVs: malformed input fails with one clear sentence; the optimiser and helpers work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from analysis import AnalysisError, fit_source, frontier, load_curves, load_points, read_results, write_summary
from analysis.approaches import group_budgets
from analysis.optim import minimize_lbfgs


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith("."), message
    # One sentence: no full stop followed by a space and a capital letter inside it.
    assert not re.search(r"\.\s+[A-Z]", message), message


GOOD = "N,D,C,loss\n" + "".join(f"{n},{20 * n},{120 * n * n},{2 + 100 / n**0.3}\n" for n in (1e6, 2e6, 4e6, 8e6))


@pytest.mark.parametrize(
    ("text", "law", "needle"),
    [
        ("N,loss\n1e6,3.0\n2e6,2.9\n", "chinchilla", "no column 'D'"),
        ("N,D,C\n1e6,2e7,1.2e14\n", "chinchilla", "no loss column 'loss'"),
        ("N,D,loss\n1e6,2e7,3.0\n2e6,4e7,nan\n3e6,5e7,2.8\n", "chinchilla", "'loss' is missing, NaN"),
        ("N,D,loss\n1e6,2e7,3.0\n2e6,,2.9\n3e6,5e7,2.8\n", "chinchilla", "'D' is missing, NaN"),
        ("N,D,loss\n1e6,2e7,3.0\nabc,4e7,2.9\n", "chinchilla", "'N' is missing, NaN or not a number at row 3"),
        ("N,D,loss\n1e6,2e7,3.0\n-5,4e7,2.9\n", "chinchilla", "need positive values"),
        ("N,D,loss\n1e6,2e7,3.0\n2e6,4e7,2.9\n4e6,8e7,2.8\n", "chinchilla", "has 5 parameters but"),
        ("N,D,loss\n1e6,2e7,3.0\n", "kaplan_n", "has 2 parameters but"),
        ("", "chinchilla", "is empty"),
        ("N,D,C,loss\n", "chinchilla", "holds no completed runs or data rows"),
        ("N,D,C,loss\n1e6,2e7,1e14,3.0\n2e6,4e7,4e14,2.9\n", "isoflop", "needs at least 2 compute budgets"),
    ],
)
def test_malformed_csv_raises_one_clear_sentence(tmp_path, text, law, needle):
    with pytest.raises(AnalysisError) as err:
        fit_source(_csv(tmp_path, text), law, bootstrap=0)
    assert needle in str(err.value)
    _one_sentence(str(err.value))


def test_missing_source_and_unknown_law(tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        load_points(tmp_path / "nope.csv")
    with pytest.raises(AnalysisError, match="unknown law"):
        fit_source(_csv(tmp_path, GOOD), "kaplan_x")
    with pytest.raises(AnalysisError, match="holds out all"):
        fit_source(_csv(tmp_path, GOOD), "kaplan_n", bootstrap=0, holdout_largest=4)


def test_csv_columns_are_configurable_and_derived(tmp_path):
    path = _csv(tmp_path, "size,flop,val\n1e6,1.2e14,3.0\n2e6,4.8e14,2.9\n")
    pts = load_points(path, n_column="size", c_column="flop", loss_column="val")
    np.testing.assert_allclose(pts.D, [2e7, 4e7])  # D = C / (6 N)
    assert pts.columns["D"] == "flop / (6 size)" and pts.names == ["row 2", "row 3"]


def _run(sweep: Path, name: str, **fields) -> Path:
    run = sweep / name
    run.mkdir(parents=True)
    record = {
        "status": "completed",
        "run_name": name,
        "params": 1200,
        "params_nonembed": 1000,
        "tokens": 5e4,
        "flops": 3e8,
        "final_val_loss": 3.0,
        "config": {"x": 1},
    }
    record.update(fields)
    (run / "results.json").write_text(json.dumps(record))
    return run


def test_sweep_reading_lists_failed_and_names_bad_runs(tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep, "a", params_nonembed=1000, final_val_loss=3.0)
    _run(sweep, "b", params_nonembed=2000, final_val_loss=2.8)
    _run(sweep, "c", status="failed", error="boom", final_val_loss=None)
    (sweep / "broken").mkdir()
    (sweep / "broken" / "results.json").write_text("{not json")
    pts = load_points(sweep, need=("N",))
    assert pts.names == ["a", "b"] and list(pts.N) == [1000, 2000]
    assert {r["run_dir"]: r["status"] for r in pts.failed} == {"c": "failed", "broken": "unreadable"}
    assert list(load_points(sweep, n_column="params", need=("N",)).N) == [1200, 1200]
    _run(sweep, "d", final_val_loss=None)
    with pytest.raises(AnalysisError, match=r"'final_val_loss' is missing, NaN or not a number at d of"):
        load_points(sweep)
    with pytest.raises(AnalysisError, match="does not exist"):
        read_results(tmp_path / "none")


def test_summary_keeps_scalar_fields_in_design_order(tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep, "a", extra_metric=1.5)
    _run(sweep, "b", status="failed", error="oom")
    path, columns, rows = write_summary(sweep)
    assert path == sweep / "summary.csv" and path.exists()
    assert columns[:3] == ["run_dir", "status", "run_name"] and "config" not in columns
    assert columns.index("final_val_loss") < columns.index("error") < columns.index("extra_metric")
    assert [r["status"] for r in rows] == ["completed", "failed"]


def test_envelope_needs_per_step_records(tmp_path):
    sweep = tmp_path / "sweep"
    run = _run(sweep, "a")
    with pytest.raises(AnalysisError, match="has no metrics.jsonl"):
        load_curves(sweep)
    row = '{"step": 1, "tokens": 10, "flops": 6e4, "loss": 5.0}\n'
    (run / "metrics.jsonl").write_text(row + "not json\n" + row + '{"step": 2, "tok')
    with pytest.raises(AnalysisError, match="line 2 is not valid JSON"):
        load_curves(sweep)
    # A last line cut by a crash is skipped, as the writer does; null losses (non-finite) are dropped.
    rows = [{"step": s, "tokens": 10 * s, "flops": 6e4 * s, "loss": 5.0 - s / 10} for s in (1, 2, 3)]
    rows.append({"step": 4, "tokens": 40, "flops": 2.4e5, "loss": None})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "tok')
    (curve,), failed = load_curves(sweep)
    assert list(curve.flops) == [6e4, 1.2e5, 1.8e5] and curve.N == 1000 and failed == []


def test_frontier_and_budget_grouping():
    c = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    loss = np.array([5.0, 4.0, 4.5, 3.0, 3.5])
    assert list(frontier(c, loss)) == [0, 1, 3]
    labels = group_budgets(np.array([1e18, 1.05e18, 3e18, 3.1e18, 1e19]))
    assert list(labels) == [0, 0, 1, 1, 2]


def test_batched_lbfgs_solves_independent_problems():
    """Shifted Rosenbrock functions, one minimum per member."""
    shift = np.linspace(-1, 1, 7)

    def fun(x, rows):
        a, b = x[:, 0] - shift[rows], x[:, 1] - shift[rows]
        f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        g = np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], axis=1)
        return f, g

    res = minimize_lbfgs(fun, np.zeros((7, 2)) - 1.0, maxiter=1000, ftol=1e-15)
    assert res.converged.all()
    np.testing.assert_allclose(res.x, np.stack([1 + shift, 1 + shift], axis=1), atol=1e-4)
