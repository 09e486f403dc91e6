"""train.microbatches=auto: the least gradient accumulation, then the least remat, whose memory fits a device.

    fit = choose(cfg, mesh_sizes, *from_budget(40.0))   # or the device's own limit (research/train/programs.py)
    cfg = apply(cfg, fit)               # train.microbatches and model.remat set to the choice

The candidates, in order: for each remat policy from the configured one up to full (none -> dots_saveable
-> full), every microbatch count that divides the per-shard batch (so each microbatch splits evenly over
the batch shards, and keeps whole streams when train.streams is set), smallest first. The first whose
planned memory per device (research/memory.py) fits the usable bytes wins: accumulation costs little,
recomputation a third more FLOPs, so remat escalates only once one sequence per device does not fit.
The planner (research/planner.py) and the run (research/train/programs.py) both choose here; the run then
checks XLA's own figure for the compiled step and, when it does not fit, moves along the same list.
Pure arithmetic: no device is touched.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from research.config.derived import train_seq_len
from research.errors import ConfigError
from research.memory import memory_estimate
from research.parallel.rules import logical_shards, make_rules

AUTO = "auto"
REMATS = ("none", "dots_saveable", "full")
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Candidate:
    microbatches: int
    remat: str
    planned_bytes: int  # memory per device by research/memory.py


@dataclasses.dataclass(frozen=True)
class Fit:
    """The automatic choice and why: what results.json records and the log line says."""

    chosen: Candidate
    index: int  # its place in the candidate list
    usable_bytes: int | None  # None: no limit known, the first candidate is taken
    budget: str  # where usable_bytes came from (a setting or the device), for the sentences
    reason: str
    xla_bytes: int | None = None  # XLA's figure for the compiled train step, once confirmed

    def record(self) -> dict[str, Any]:
        return {
            "setting": AUTO,
            "microbatches": self.chosen.microbatches,
            "remat": self.chosen.remat,
            "planned_bytes": self.chosen.planned_bytes,
            "xla_bytes": self.xla_bytes,
            "usable_bytes": self.usable_bytes,
            "budget": self.budget,
            "reason": self.reason,
        }


def is_auto(train: Any) -> bool:
    return train.microbatches == AUTO


def from_budget(budget_gb: float) -> tuple[int, str]:
    """(usable bytes, how the sentences name them) for train.memory_budget_gb."""
    return round(budget_gb * GB), f"budget train.memory_budget_gb={budget_gb:g}"


def candidates(cfg: Any, sizes: dict[str, int], attention_impl: str | None = None) -> list[Candidate]:
    """Every (microbatches, remat) the automatic choice may take, in the order it tries them. attention_impl:
    the kernel that will run, when it differs from the configured one (the fallback from cudnn to xla)."""
    train, model = cfg.train, cfg.model
    rules = make_rules(dict(cfg.mesh.rules))
    per_shard = max(1, train.batch_size // logical_shards(sizes, rules, "batch"))
    streams = train.streams or 1
    counts = [m for m in range(1, per_shard + 1) if per_shard % m == 0 and (per_shard // m) % streams == 0]
    start = REMATS.index(model.remat) if model.remat in REMATS else 0
    out = []
    for remat in REMATS[start:]:
        m_cfg = dataclasses.replace(model, remat=remat, attention_impl=attention_impl or model.attention_impl)
        for m in counts:
            est = memory_estimate(
                m_cfg,
                batch_size=train.batch_size,
                seq_len=train_seq_len(cfg),
                mesh_shape=sizes,
                rules=rules,
                microbatches=m,
            )
            out.append(Candidate(m, remat, int(est["total_bytes"])))
    return out


def choose(
    cfg: Any,
    sizes: dict[str, int],
    usable_bytes: int | None,
    budget: str,
    *,
    attention_impl: str | None = None,
    after: int = -1,
    scale: float = 1.0,
) -> Fit:
    """The first candidate after index `after` whose planned bytes x `scale` fit `usable_bytes` (scale: how
    far XLA's figure exceeded the plan for the candidate that did not fit). Raises ConfigError, one
    sentence naming the budget and the smallest that would fit, when none does."""
    cands = candidates(cfg, sizes, attention_impl)
    if usable_bytes is None:
        c = cands[0]
        return Fit(c, 0, None, budget, f"{_what(c)}: {budget}, so nothing is split or recomputed")
    for i, c in enumerate(cands):
        if i > after and c.planned_bytes * scale <= usable_bytes:
            return Fit(c, i, usable_bytes, budget, _reason(cands, i, usable_bytes, budget))
    least = min(cands[after + 1 :] or cands, key=lambda c: c.planned_bytes)
    need = least.planned_bytes * scale
    figure = "planned" if scale == 1.0 else f"planned x {scale:.2f}, as XLA's figure for the last try"
    raise ConfigError(
        f"train.microbatches=auto: {cfg.model.name} does not fit the {budget} ({size(usable_bytes)} usable per "
        f"device) even with {_what(least)} ({size(need)} {figure}); a budget of at least {_round_up(need / GB):g} "
        "GB would fit, or spread the batch over more devices."
    )


def apply(cfg: Any, fit: Fit) -> Any:
    """cfg with train.microbatches and model.remat set to the choice."""
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, microbatches=fit.chosen.microbatches),
        model=dataclasses.replace(cfg.model, remat=fit.chosen.remat),
    )


def _what(c: Candidate) -> str:
    return f"{c.microbatches} microbatch{'es' if c.microbatches > 1 else ''}, remat={c.remat}"


def size(n: float) -> str:
    """Bytes as decimal GB (MB below one GB), for the sentences."""
    return f"{n / GB:,.2f} GB" if n >= GB else f"{n / 1e6:,.1f} MB"


def _round_up(x: float, digits: int = 3) -> float:
    """x rounded up to `digits` significant digits (a budget that surely fits)."""
    step = 10 ** (math.floor(math.log10(x)) - digits + 1)
    return round(math.ceil(x / step) * step, 12)


def _reason(cands: list[Candidate], i: int, usable: int, budget: str) -> str:
    """Why candidate i: it fits, and what the smaller splits (and lighter remat) would have needed."""
    c, first = cands[i], cands[0]
    out = f"{_what(c)}: {size(c.planned_bytes)} planned per device fits the {budget} ({size(usable)})"
    if i > 0:
        out += f"; {_what(first)} would need {size(first.planned_bytes)}"
    if c.remat != first.remat:
        last = [d for d in cands[:i] if d.remat == first.remat][-1]
        out += f", {_what(last)} {size(last.planned_bytes)}"
    return out
