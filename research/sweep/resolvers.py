"""The ${sweep.*} resolvers experiment files use; every one reads the member's own config (`_root_`).

${sweep.rung:FIELD}                 FIELD (name, n_layer, d_model, n_head, ...) of this member's rung of
                                    sweep.ladder: sweep.size names it, or (IsoFLOP) the rung nearest the
                                    expected optimum N_opt = sqrt(C / (6 k)), k = sweep.optimum_tokens_per_param,
                                    moved by sweep.offset rungs
${sweep.n:}                         N, the member's non-embedding parameters (research/flops.py)
${sweep.lr:LR0,N0,EXP}              learning rate LR0 x (N / N0)^EXP            (rules.lr_rule)
${sweep.batch:B0,N0,EXP,LO,HI}      sequences per batch: B0 x (N / N0)^EXP rounded to a power of two,
                                    clipped to [LO, HI]                           (rules.batch_rule)
${sweep.batch_of_tokens:T}          sequences holding about T tokens (a paper's batch size in tokens)
${sweep.warmup:TOKENS,FRACTION}     warmup steps: TOKENS worth of batches, never more than FRACTION of the
                                    run's steps                                   (rules.warmup_rule)
${sweep.isoflop_tokens:}            D = C / (6 N) for C = sweep.compute
${sweep.per_batch:SEQUENCES}        batches holding SEQUENCES sequences (a fixed eval set for any batch size)
${sweep.sci:X}                      a compact label: 3e+11 -> 3e11 (run names)
${sweep.budget:}                    the budget as a run-name label: tpp20, D2.5e6 or S1000
"""

from __future__ import annotations

import json
import math
from typing import Any

from omegaconf import OmegaConf

from research import flops
from research.config.derived import batch_tokens, total_steps, train_seq_len
from research.config.schema import ModelConfig
from research.errors import ConfigError
from research.sweep.rules import batch_rule, lr_rule, optimum_params, sci, warmup_rule


def model_from(node: Any, **fields: Any) -> ModelConfig:
    """A ModelConfig from a model node's plain values (interpolations dropped) plus `fields`."""
    raw = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else dict(node)
    plain = {k: v for k, v in raw.items() if not (isinstance(v, str) and "${" in v)}
    plain.update(fields)
    return ModelConfig(**plain)


def params_nonembed(model: ModelConfig) -> int:
    return int(flops.param_counts(model)["params_nonembed"])


_LADDERS: dict[str, list[tuple[str, dict[str, Any], int]]] = {}  # resolvers ask for the same ladder often


def ladder(root: Any) -> list[tuple[str, dict[str, Any], int]]:
    """sweep.ladder as (name, fields, N) sorted by N; N counted with the base model's vocab and context."""
    rungs = OmegaConf.to_container(root.sweep.ladder, resolve=True) or {}
    if not rungs:
        raise ConfigError(
            "sweep.ladder is empty; list the rungs (name: {n_layer, d_model, n_head}) in the experiment file."
        )
    base = OmegaConf.to_container(root.model, resolve=False)
    key = json.dumps([rungs, base], sort_keys=True, default=str)
    if key not in _LADDERS:
        out = []
        for name, spec in rungs.items():
            spec = dict(spec)
            out.append((str(name), spec, params_nonembed(model_from(base, name=str(name), **spec))))
        _LADDERS[key] = sorted(out, key=lambda r: r[2])
    return _LADDERS[key]


def pick_rung(root: Any) -> tuple[str, dict[str, Any], int]:
    rungs = ladder(root)
    sweep = root.sweep
    if sweep.size is not None:
        for rung in rungs:
            if rung[0] == sweep.size:
                return rung
        raise ConfigError(
            f"sweep.size={sweep.size} is not a rung of sweep.ladder; choose one of {', '.join(r[0] for r in rungs)}."
        )
    if sweep.compute is None:
        raise ConfigError(
            "a ${sweep.rung:...} member needs sweep.size (a ladder) or sweep.compute (an IsoFLOP grid); set one."
        )
    target = math.log(optimum_params(float(sweep.compute), float(sweep.optimum_tokens_per_param)))
    centre = min(range(len(rungs)), key=lambda i: abs(math.log(rungs[i][2]) - target))
    i = centre + int(sweep.offset)
    if not 0 <= i < len(rungs):
        raise ConfigError(
            f"sweep.offset={sweep.offset} at sweep.compute={sweep.compute:g} falls off sweep.ladder (the optimum is "
            f"rung {rungs[centre][0]}, {centre} from the bottom, {len(rungs) - 1 - centre} from the top); add rungs "
            "or narrow the offsets."
        )
    return rungs[i]


def _rung(field_name: str, *, _root_: Any) -> Any:
    name, spec, _ = pick_rung(_root_)
    if field_name == "name":
        return name
    return spec.get(field_name)  # e.g. d_ff absent: null -> 4 x d_model


def _n(*, _root_: Any) -> int:
    return params_nonembed(ModelConfig(**OmegaConf.to_container(_root_.model, resolve=True)))  # type: ignore[arg-type]


def _lr(ref_lr: float, ref_n: float, exponent: float, *, _root_: Any) -> float:
    return lr_rule(_n(_root_=_root_), float(ref_lr), float(ref_n), float(exponent))


def _batch(ref_batch: int, ref_n: float, exponent: float, lo: int, hi: int, *, _root_: Any) -> int:
    return batch_rule(_n(_root_=_root_), int(ref_batch), float(ref_n), float(exponent), int(lo), int(hi))


def _batch_of_tokens(tokens: float, *, _root_: Any) -> int:
    return max(1, round(float(tokens) / train_seq_len(_root_)))


def _warmup(warmup_tokens: float, max_fraction: float, *, _root_: Any) -> int:
    # total_steps, not budget(): budget() reads optim.warmup_steps, which is this resolver
    steps = total_steps(_root_, _n(_root_=_root_))
    return warmup_rule(steps, batch_tokens(_root_), float(warmup_tokens), float(max_fraction))


def _isoflop_tokens(*, _root_: Any) -> int:
    compute = _root_.sweep.compute
    if compute is None:
        raise ConfigError(
            "${sweep.isoflop_tokens:} needs sweep.compute (the budget C in FLOPs); set it in the experiment."
        )
    return int(round(float(compute) / (6.0 * _n(_root_=_root_))))


def _budget(*, _root_: Any) -> str:
    """The budget in a run name: tpp20 (tokens per parameter), D2.5e6 (tokens) or S1000 (steps)."""
    train = _root_.train
    if train.tokens_per_param is not None:
        return f"tpp{sci(float(train.tokens_per_param))}"
    if train.tokens is not None:
        return f"D{sci(float(train.tokens))}"
    return f"S{train.steps}"


def _seed_tag(*, _root_: Any) -> str:
    seeds = list(_root_.sweep.seeds or [])
    return "" if not seeds or _root_.train.seed == seeds[0] else f"-s{_root_.train.seed}"


def _csv(values: Any) -> str:
    items = list(values) if OmegaConf.is_list(values) or isinstance(values, list | tuple) else [values]
    return ",".join(str(v) for v in items)


def _per_batch(sequences: int, *, _root_: Any) -> int:
    return max(1, math.ceil(int(sequences) / int(_root_.train.batch_size)))


RESOLVERS = {
    "sweep.rung": _rung,
    "sweep.n": _n,
    "sweep.lr": _lr,
    "sweep.batch": _batch,
    "sweep.batch_of_tokens": _batch_of_tokens,
    "sweep.warmup": _warmup,
    "sweep.isoflop_tokens": _isoflop_tokens,
    "sweep.per_batch": _per_batch,
    "sweep.budget": _budget,
    "sweep.seed_tag": _seed_tag,
    "sweep.csv": _csv,
    "sweep.sci": lambda x: sci(float(x)) if isinstance(x, int | float) else str(x),
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
