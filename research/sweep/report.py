"""What a sweep left: summary.csv, and the report `make sweep` prints (members, overheads, the fit, figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from analysis.results import write_summary as write_table
from research.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write_summary(sweep_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """SWEEP_DIR/summary.csv: one row per member, the scalar fields of its results.json (analysis/results.py)."""
    path, _, rows = write_table(sweep_dir)
    return path, rows


def _experiment(name: str) -> object:
    path = ROOT / "conf" / "experiment" / f"{name}.yaml"
    if not path.exists():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"EXPERIMENT={name} is not a file in conf/experiment; choose one of {options}.")
    return OmegaConf.load(path)


def experiment_law(name: str) -> str:
    return str(OmegaConf.select(_experiment(name), "sweep.law") or "kaplan_n")


def experiment_fit_args(name: str) -> str:
    """The experiment's extra arguments of `python -m analysis fit` (sweep.fit_args), e.g. --irreducible."""
    return str(OmegaConf.select(_experiment(name), "sweep.fit_args") or "")


def overhead_note(rec: dict[str, Any]) -> str:
    """'  overhead 3.1 s = 4.2% of training': start-up, compiling and any wait for the compile that ran
    ahead, against the training loop's time (steps, evaluations, checkpoints)."""
    wall, start, comp = (rec.get(k) for k in ("wall_seconds", "startup_seconds", "compile_seconds"))
    if not all(isinstance(x, int | float) for x in (wall, start, comp)):
        return ""
    wait = rec.get("compile_ahead_wait_seconds") or 0.0
    train = wall - start - comp
    share = f" = {100 * (start + comp + wait) / train:.1f}% of training" if train > 0 else ""
    ahead = f", waited {wait:.1f} for the compile ahead" if rec.get("compile_ahead_seconds") is not None else ""
    return f"  overhead {start + comp + wait:.1f} s (start-up {start:.1f}, compiling {comp:.1f}{ahead}){share}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _interval(ci: dict, key: str) -> str:
    return f" [{ci[key][0]:.4g}, {ci[key][1]:.4g}]" if isinstance(ci.get(key), list) else ""


def _print_fit(sweep_dir: Path, fit_dir: Path, fit: dict | None) -> None:
    """The law with its 95% intervals, what it means in one sentence, the held-out check and the figures."""
    if not fit:
        print(f"fit:         none at {fit_dir} (python -m analysis fit {sweep_dir} --law ... --out {fit_dir})")
        return
    if fit.get("refused"):
        print(f"fit:         REFUSED ({fit.get('law')}): {fit['reasons'][0]}")
        for reason in fit["reasons"][1:]:
            print(f"             also: {reason}")
        return
    ci = fit.get("intervals", {})
    params = ", ".join(
        f"{k} = {v:.4g}{_interval(ci, k)}" for k, v in fit.get("params", {}).items() if isinstance(v, int | float)
    )
    mark = "" if fit.get("valid", True) else "  INVALID (forced): " + " | ".join(fit.get("reasons", []))
    print(f"fit:         {fit_dir / 'fit.json'}  ({fit.get('law')}: {fit.get('formula')}){mark}")
    print(f"             {params}  (95% bootstrap intervals)")
    if fit.get("summary"):
        print(f"means:       {fit['summary']}")
    for row in fit.get("holdout") or []:
        lo, hi = row["interval"]
        inside = "inside" if row["inside_interval"] else "OUTSIDE"
        print(
            f"held out:    {row['name']}: predicted {row['predicted']:.4g} [{lo:.4g}, {hi:.4g}], measured "
            f"{row['measured']:.4g} ({row['error_pct']:+.2f}%, {inside} its interval)"
        )
    for fig in fit.get("figures", []):
        print(f"figure:      {fit_dir / fig}")


def report(sweep_dir: Path, fit_dir: Path | None = None) -> int:
    """Print where the summary, fit and figures are; exit status 1 when a member did not complete."""
    fit_dir = fit_dir or sweep_dir / "fit"
    path, rows = write_summary(sweep_dir)
    done = [r for r in rows if r.get("status") == "completed"]
    print(f"\n== {sweep_dir}: {len(rows)} members, {len(done)} completed")
    for r in sorted(rows, key=lambda r: (r.get("params_nonembed") or 0, str(r.get("run_name")))):
        loss = r.get("final_val_loss")
        line = f"  {str(r.get('run_name')):<22} {str(r.get('status')):<10}"
        if r.get("params_nonembed"):
            line += f" N={r['params_nonembed']:>11,}  D={r.get('tokens') or 0:>14,}"
        if isinstance(loss, float):
            line += f"  val loss {loss:.4f}"
        line += overhead_note(r)
        if r.get("status") != "completed":
            line += f"  <- {r.get('error')}"
        print(line)
    print(f"summary:     {path}")
    _print_fit(sweep_dir, fit_dir, _read_json(fit_dir / "fit.json"))
    print(f"tensorboard: .venv/bin/tensorboard --logdir {sweep_dir}   (HParams tab: one row per member)")
    if len(done) < len(rows):
        print(
            f"{len(rows) - len(done)} member(s) did not complete; fix the cause and rerun `make sweep` (finished "
            "members are kept, interrupted ones resume, failed ones rerun)."
        )
        return 1
    return 0
