"""Scaling-law analysis: read sweep records or CSVs, fit laws robustly, bootstrap, plot.

Imports nothing from the training code (research/, experiments/): it reads only the records whose
format docs/architecture.md fixes (results.json, metrics.jsonl, summary.csv) and plain CSV files.
"""

from analysis.api import ALL_LAWS, fit_source
from analysis.approaches import ExtrapolationWarning, envelope, envelope_from_points, isoflop
from analysis.fit import fit_law, summarize_samples
from analysis.laws import Law, chinchilla, chinchilla_derived, get_law, kaplan_nd, power_law
from analysis.points import Points, load_points
from analysis.predict import predict_holdout
from analysis.results import AnalysisError, load_curves, read_results, write_summary
from analysis.selection import frontier, select, select_points

__all__ = [
    "ALL_LAWS",
    "AnalysisError",
    "ExtrapolationWarning",
    "Law",
    "Points",
    "chinchilla",
    "chinchilla_derived",
    "envelope",
    "envelope_from_points",
    "fit_law",
    "fit_source",
    "frontier",
    "get_law",
    "isoflop",
    "kaplan_nd",
    "load_curves",
    "load_points",
    "power_law",
    "predict_holdout",
    "read_results",
    "select",
    "select_points",
    "summarize_samples",
    "write_summary",
]
