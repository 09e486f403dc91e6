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


def experiment_law(name: str) -> str:
    path = ROOT / "conf" / "experiment" / f"{name}.yaml"
    if not path.exists():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"EXPERIMENT={name} is not a file in conf/experiment; choose one of {options}.")
    law = OmegaConf.select(OmegaConf.load(path), "sweep.law")
    return str(law or "kaplan_n")


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
    fit = _read_json(fit_dir / "fit.json")
    if fit:
        ci = fit.get("intervals", {})
        params = ", ".join(
            f"{k} = {v:.4g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if isinstance(ci.get(k), list) else "")
            for k, v in fit.get("params", {}).items()
            if isinstance(v, int | float)
        )
        print(f"fit:         {fit_dir / 'fit.json'}  ({fit.get('law')}: {params})")
        for fig in fit.get("figures", []):
            print(f"figure:      {fit_dir / fig}")
    else:
        print(f"fit:         none at {fit_dir} (python -m analysis fit {sweep_dir} --law ... --out {fit_dir})")
    print(f"tensorboard: .venv/bin/tensorboard --logdir {sweep_dir}   (HParams tab: one row per member)")
    if len(done) < len(rows):
        print(
            f"{len(rows) - len(done)} member(s) did not complete; fix the cause and rerun `make sweep` (finished "
            "members are kept, interrupted ones resume, failed ones rerun)."
        )
        return 1
    return 0
