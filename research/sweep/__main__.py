"""`python -m research.sweep law EXPERIMENT` and `fit-args EXPERIMENT` print the law an experiment is fitted with
and its extra fit arguments (the Makefile reads them); `python -m research.sweep report SWEEP_DIR` prints the
members, summary, fit (law, intervals, meaning, held-out check) and figures of a sweep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from research.errors import ConfigError
from research.sweep.report import experiment_fit_args, experiment_law, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("law", help="the law an experiment is fitted with").add_argument("experiment")
    sub.add_parser("fit-args", help="the experiment's extra fit arguments (sweep.fit_args)").add_argument("experiment")
    rep = sub.add_parser("report", help="summary.csv, fit and figure paths of a sweep directory")
    rep.add_argument("sweep_dir")
    rep.add_argument("--fit", help="fit directory (default SWEEP_DIR/fit)")
    args = p.parse_args(argv)
    try:
        if args.command == "law":
            print(experiment_law(args.experiment))
            return 0
        if args.command == "fit-args":
            print(experiment_fit_args(args.experiment))
            return 0
        return report(Path(args.sweep_dir), Path(args.fit) if args.fit else None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
