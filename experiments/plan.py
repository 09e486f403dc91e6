"""Parameter counts and FLOPs per token for a model config, without building the model.

    python experiments/plan.py model=gpt3_175b              # readable table
    python experiments/plan.py model=gpt2_small output=json # one JSON object on stdout

Pure arithmetic from research/flops.py, so even gpt3_175b is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from research.config import register_configs, train_seq_len  # noqa: E402
from research.flops import summary  # noqa: E402

# A planner writes nothing: no run directory, no .hydra/ snapshot, no log file.
_QUIET = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none")


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def render_table(s: dict) -> str:
    rows = [
        ("model", s["model"], ""),
        ("seq_len", s["seq_len"], ""),
        ("params", f"{s['params']:,}", _human(s["params"])),
        ("params_embed", f"{s['params_embed']:,}", "token + position embeddings (+ untied head)"),
        ("params_nonembed", f"{s['params_nonembed']:,}", _human(s["params_nonembed"])),
        ("flops_per_token_6n", f"{s['flops_per_token_6n']:,}", "6 x params_nonembed"),
        ("flops_per_token", f"{s['flops_per_token']:,}", "6 x (params - positions) + 12 L H Q T"),
    ]
    if "paper_params" in s:
        rows.append(("paper_params", f"{s['paper_params']:,}", f"counted {100 * s['params_vs_paper']:+.2f}%"))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(str(r[1])) for r in rows)
    return "\n".join(f"{k:<{width}}  {v!s:>{vwidth}}  {note}".rstrip() for k, v, note in rows)


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    seq_len = train_seq_len(cfg) if "train" in cfg else cfg.model.seq_len
    s = summary(cfg.model, seq_len)
    if cfg.get("output", "text") == "json":
        print(json.dumps(s))
    else:
        print(render_table(s))


if __name__ == "__main__":
    register_configs()
    sys.argv += [o for o in _QUIET if o.split("=")[0] not in " ".join(sys.argv[1:])]
    main()
