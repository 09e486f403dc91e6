"""The figures of a fit, each as PNG and PDF: what analysis/api.py draws into --out.

Loss laws: loss vs N (or D) and vs C with the fitted law, its band and the train-only fit extrapolated to
the held-out points; the residuals; the implied allocation (L(N, D)); predicted vs measured. Approaches 1
and 2: the IsoFLOP profiles, L_opt(C), N_opt(C) and D_opt(C). A fit forced past its validity checks carries
the reasons on every figure.
"""

from __future__ import annotations

from pathlib import Path

from analysis.plots import allocation, loss
from analysis.plots.style import save, stamp_invalid


def make_figures(
    figs: dict, out: Path, reasons: list[str] | None = None, compute: list[float] | None = None
) -> list[str]:
    """Draw every figure that applies to this fit into `out` as PNG and PDF; returns the PNG names (the PDFs sit
    beside them under the same stems)."""
    compute = list(compute or [])
    prediction = figs.get("prediction")
    drawn = {}
    if figs["kind"] == "loss_law":
        law, fit, pts = figs["law"], figs["fit"], figs["points"]
        x_var = "D" if law.variables == ("D",) else "C" if law.variables == ("C",) else "N"
        loss_pred = prediction if prediction and "held" in prediction else None
        if x_var != "C":
            drawn[f"loss_vs_{x_var}"] = loss.loss_vs_variable(law, fit, pts, x_var, loss_pred)
        if pts.C is not None or figs["all_points"].C is not None:
            drawn["loss_vs_C"] = loss.loss_vs_compute(law, fit, figs["all_points"], figs.get("derived"), loss_pred)
        drawn["residuals"] = loss.residuals(law, fit, pts)
        if figs.get("derived") is not None:
            drawn["optimal_allocation"] = loss.allocation_curves(figs["derived"], pts)
    else:
        alloc = figs["alloc"]
        if alloc.groups:
            drawn["isoflop"] = allocation.isoflop_profiles(alloc)
        drawn["loss_vs_C"] = allocation.loss_vs_compute(alloc, compute, prediction)
        drawn["optimal_allocation"] = allocation.allocation_points(alloc, compute, prediction)
    if prediction is not None:
        drawn["prediction"] = loss.predicted_vs_actual(prediction)
    names = []
    for stem, fig in drawn.items():
        if reasons:
            stamp_invalid(fig, reasons)
        names.append(save(fig, out, stem)[0])
    return sorted(names)
