"""analysis/notebooks/scaling_laws.ipynb executes top to bottom without error (nbclient, python3 kernel)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "analysis" / "notebooks" / "scaling_laws.ipynb"
REFERENCE = ROOT.parent / "shared/reference/chinchilla_epoch_240.csv"


def make_tpp_sweep(root: Path) -> Path:
    """Seven sizes at 20 tokens per parameter (the shape of `make sweep`'s cpu_sweep), per-step records too."""
    rng = np.random.default_rng(0)
    sweep = root / "cpu_sweep"
    for n in np.geomspace(3e3, 1.15e5, 7).astype(int):
        run = sweep / f"nano_{n}-tpp20"
        run.mkdir(parents=True)
        tokens = 20 * int(n)
        steps = np.arange(1, 41)
        seen = steps * tokens // 40
        loss = 1.5 + 60 / (n * seen) ** 0.25 * np.exp(rng.normal(0, 0.003, steps.size))
        rows = [
            {"step": int(s), "tokens": int(t), "flops": 6.0 * n * t, "loss": float(x)}
            for s, t, x in zip(steps, seen, loss, strict=True)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        record = {
            "status": "completed",
            "run_name": run.name,
            "params_nonembed": int(n),
            "params": int(n) + 9000,
            "tokens": tokens,
            "flops": 6.0 * n * tokens,
            "final_val_loss": float(loss[-1]) * 1.01,
        }
        (run / "results.json").write_text(json.dumps(record))
    return sweep


def _execute(monkeypatch, tmp_path: Path, sweep_dir: Path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e .[dev])")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e .[dev])")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e .[dev])")
    monkeypatch.setenv("SWEEP_DIR", str(sweep_dir))
    monkeypatch.setenv("FIT_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("BOOTSTRAP", "100")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return outputs


@pytest.mark.skipif(not REFERENCE.exists(), reason=f"reference data {REFERENCE} is absent")
def test_notebook_on_reference_data(tmp_path, monkeypatch):
    """What a fresh clone sees before `make sweep`: no sweep, so the reference data and L(N, D)."""
    outputs = _execute(monkeypatch, tmp_path, tmp_path / "no_sweep_here")
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 6
    fit = json.loads((tmp_path / "out" / "chinchilla" / "fit.json").read_text())
    assert fit["params"]["alpha"] == pytest.approx(0.34731, rel=5e-3)


def test_notebook_on_fixed_ratio_sweep(tmp_path, monkeypatch):
    """After `make sweep`: runs at 20 tokens per parameter, so L(N) and the envelope (no IsoFLOP profiles)."""
    outputs = _execute(monkeypatch, tmp_path, make_tpp_sweep(tmp_path))
    text = "".join(o.get("text", "") for o in outputs)
    assert "fitting Kaplan's L(N)" in text and "not available for this data" in text
    assert (tmp_path / "out" / "kaplan_n" / "fit.json").exists()
    assert (tmp_path / "out" / "envelope" / "fit.json").exists()
