"""CLI: python -m analysis fit SOURCE --law LAW --out DIR | summary SWEEP_DIR | bench."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from analysis.api import ALL_LAWS, DEFAULT_COMPUTE, fit_source
from analysis.results import AnalysisError, write_summary

# Columns `summary` prints (all scalar fields go to summary.csv).
PRINTED = (
    "run_dir",
    "status",
    "model",
    "params_nonembed",
    "tokens",
    "flops",
    "final_train_loss",
    "final_val_loss",
    "wall_seconds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a scaling law to a sweep directory or CSV; writes fit.json and figures")
    fit.add_argument("source", help="sweep directory (every results.json under it), its summary.csv, or any CSV")
    fit.add_argument(
        "--law",
        choices=ALL_LAWS,
        default="chinchilla",
        help="chinchilla: E + A/N^alpha + B/D^beta; kaplan_n/c/d: (X_c/X)^alpha_X; kaplan_nd: Kaplan's L(N, D); "
        "isoflop, envelope: Chinchilla approaches 2 and 1 (default: chinchilla)",
    )
    fit.add_argument("--out", required=True, help="output directory for fit.json and PNG figures")
    fit.add_argument(
        "--holdout-largest",
        type=int,
        default=0,
        metavar="K",
        help="also fit without the K largest compute budgets (every run at them) and check the predictions for them",
    )
    fit.add_argument(
        "--bootstrap", type=int, default=4000, metavar="N", help="bootstrap resamples (0: none; default 4000)"
    )
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit.add_argument("--n-column", help="N: params_nonembed (sweep default) or params; CSV column (default N)")
    fit.add_argument("--d-column", help="D: CSV column (default D; derived as C/(6N) when absent)")
    fit.add_argument("--c-column", help="C: CSV column (default C; derived as 6ND when absent)")
    fit.add_argument("--loss-column", help="loss: CSV column (default loss) or results.json field (final_val_loss)")
    fit.add_argument("--huber-delta", type=float, default=1e-3, help="Huber delta on log residuals (default 1e-3)")
    fit.add_argument(
        "--compute",
        type=float,
        nargs="+",
        default=list(DEFAULT_COMPUTE),
        metavar="FLOP",
        help="compute budgets for N_opt, D_opt and tokens per parameter (default 5.88e23)",
    )
    fit.add_argument("--irreducible", action="store_true", help="Kaplan laws with an irreducible term E + A/X^alpha")
    fit.add_argument(
        "--budget-tolerance",
        type=float,
        default=0.05,
        metavar="DEX",
        help="isoflop: runs whose log10 C differ by less than this share a budget",
    )
    fit.add_argument("--no-plots", action="store_true", help="write fit.json only")
    fit.add_argument("--min-compute", type=float, metavar="FLOP", help="leave out points below this compute")
    fit.add_argument("--max-compute", type=float, metavar="FLOP", help="leave out points above this compute")
    fit.add_argument(
        "--tpp-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="keep points with LO <= D/N <= HI tokens per parameter",
    )
    fit.add_argument("--budgets", type=float, nargs="+", metavar="FLOP", help="keep only these compute budgets")
    fit.add_argument("--exclude", nargs="+", metavar="RUN", help="leave out these runs (names as summary.csv has them)")
    fit.add_argument(
        "--isoflop-window",
        type=float,
        metavar="LOG_N",
        help="isoflop: fit each parabola within this distance (natural log of N) of its minimum",
    )
    fit.add_argument(
        "--keep-edge-minima",
        action="store_true",
        help="isoflop: keep minima outside their sampled sizes in N_opt(C) (left out by default)",
    )
    fit.add_argument(
        "--force",
        action="store_true",
        help="fit even what the validity checks refuse; fit.json and figures say valid: false",
    )
    summ = sub.add_parser("summary", help="print the sweep table and write SWEEP_DIR/summary.csv")
    summ.add_argument("sweep_dir")
    bench = sub.add_parser("bench", help="time the full grid + bootstrap on the reference data")
    bench.add_argument("--bootstrap", type=int, default=4000)
    bench.add_argument("--csv", help="data to time on (default analysis/reference/chinchilla_epoch_240.csv)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fit":
            return _fit(args)
        if args.command == "summary":
            return _summary(args.sweep_dir)
        from analysis.bench import run_bench

        return run_bench(args.csv, args.bootstrap)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _fit(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collected into fit.json and printed below
        result = fit_source(
            args.source,
            args.law,
            args.out,
            bootstrap=args.bootstrap,
            seed=args.seed,
            holdout_largest=args.holdout_largest,
            n_column=args.n_column,
            d_column=args.d_column,
            c_column=args.c_column,
            loss_column=args.loss_column,
            huber_delta=args.huber_delta,
            compute=args.compute,
            irreducible=args.irreducible,
            budget_tolerance=args.budget_tolerance,
            plots=not args.no_plots,
            min_compute=args.min_compute,
            max_compute=args.max_compute,
            tpp_range=tuple(args.tpp_range) if args.tpp_range else None,
            budgets=args.budgets,
            exclude=args.exclude,
            isoflop_window=args.isoflop_window,
            keep_edge_minima=args.keep_edge_minima,
            force=args.force,
        )
    print(f"{result['law']}: {result['formula']}  ({result['n_points']} points from {result['source']})")
    if not result["valid"]:
        print("  INVALID (--force): " + " | ".join(result["reasons"]))
    level = round(100 * result.get("interval_level", 0.95))
    for name, value in result["params"].items():  # intervals, not +- a standard error: the bootstraps are skewed
        lo, hi = (result.get("intervals") or {}).get(name) or (None, None)
        print(f"  {name:>8} = {value:.6g}" + (f"  {level}%: [{lo:.4g}, {hi:.4g}]" if lo is not None else ""))
    for name, value in result["derived"].items():
        if value is not None and (name in ("a", "b") or name.startswith("tokens_per_param")):
            print(f"  {name} = {value:.4g}")
    for row in result.get("holdout") or []:
        lo, hi = row["interval"]
        inside = "inside" if row["inside_interval"] else "OUTSIDE"
        print(
            f"  held out {row['name']}: predicted {row['predicted']:.4g} [{lo:.4g}, {hi:.4g}], measured "
            f"{row['measured']:.4g} ({row['error_pct']:+.2f}%, {inside} its interval)"
        )
    if result.get("summary"):
        print(f"  {result['summary']}")
    for run in result.get("failed_runs", []):
        print(f"  skipped run {run.get('run_dir')} (status {run.get('status')})")
    for note in result.get("warnings", []):
        print(f"  warning: {note}")
    print(f"wrote {Path(args.out) / 'fit.json'} and {len(result.get('figures', []))} figures")
    return 0


def _summary(sweep_dir: str) -> int:
    path, columns, rows = write_summary(sweep_dir)
    if not rows:
        print(f"no runs under {sweep_dir} (no results.json or metrics.jsonl found); wrote an empty {path}")
        return 0
    shown = [c for c in PRINTED if c in columns]
    cells = [[_cell(row.get(c)) for c in shown] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(shown)]
    print("  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)))
    for row, line in zip(rows, cells, strict=True):
        mark = "" if row.get("status") == "completed" else f"   <- {row.get('status', '?').upper()}"
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + mark)
    n_done = sum(r.get("status") == "completed" for r in rows)
    print(f"{len(rows)} runs ({n_done} completed, {len(rows) - n_done} not); wrote {path}")
    return 0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
