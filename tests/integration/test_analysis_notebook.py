"""analysis/notebooks/scaling_laws.ipynb executes top to bottom (nbclient, python3 kernel) and tells the story
the data support: on the reference data a valid L(N, D) with its checks and held-out budgets; on a real tiny
sweep that is too small for its law, the refusal and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, tiny_overrides
from test_sweep import TINY_LADDER, multirun

NOTEBOOK = ROOT / "analysis" / "notebooks" / "scaling_laws.ipynb"


def _execute(monkeypatch, tmp_path: Path, sweep_dir: Path) -> tuple[str, int]:
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
    texts = [o.get("text", "") for o in outputs]
    texts += [o.get("data", {}).get("text/markdown", "") for o in outputs]
    return "\n".join(texts), sum("image/png" in o.get("data", {}) for o in outputs)


def test_notebook_on_reference_data(tmp_path, monkeypatch):
    """What a fresh clone sees before `make sweep`: no sweep, so the Epoch reference data and L(N, D)."""
    text, images = _execute(monkeypatch, tmp_path, tmp_path / "no_sweep_here")
    assert images >= 5
    fit = json.loads((tmp_path / "out" / "chinchilla" / "fit.json").read_text())
    assert fit["valid"] is True
    assert fit["params"]["alpha"] == pytest.approx(0.34731, rel=5e-3)
    assert "240 configurations" in text and "valid: True" in text
    assert "Held out, the largest budget's" in text and "**Conclusion**" in text
    assert "Besiroglu" in text or "Epoch" in text  # the published rows beside ours


def test_notebook_on_a_real_sweep_too_small_for_its_law(tmp_path, monkeypatch, corpus_dir):
    """Three sizes, two seeds each, trained for real: seeds are averaged into three points, and L(N) with a
    floor (three parameters) is refused with its reason; no parameter table, no conclusion drawn."""
    sweep_dir = tmp_path / "runs" / "tiny_seeded"
    overrides = [*tiny_overrides(corpus_dir, tmp_path / "data"), *TINY_LADDER, "sweep.size=nano_3k,nano_7k,nano_14k"]
    overrides[overrides.index("sweep.seeds=[0]")] = "sweep.seeds=[0,1]"
    multirun(sweep_dir, overrides)
    text, images = _execute(monkeypatch, tmp_path, sweep_dir)
    assert "6 completed runs of 6" in text
    assert "3 configurations from 6 runs; seed spread (pooled)" in text
    assert "REFUSED: the data cannot support kaplan_n" in text and "gives only 3 usable points" in text
    assert "valid:" not in text and "95% low" not in text and images == 0
    assert "nothing is concluded from it" in text
    fit = json.loads((tmp_path / "out" / "kaplan_n" / "fit.json").read_text())
    assert fit["valid"] is False and fit["refused"] is True and fit["reasons"]
