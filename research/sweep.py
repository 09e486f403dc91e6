"""Sweeps: per-size hyperparameter rules, the ${sweep.*} resolvers experiment files use, and the Hydra
callback that prints each member's progress and writes summary.csv when the multirun ends.

An experiment file (conf/experiment/<name>.yaml) varies `hydra.sweeper.params` and derives each member's
shape and hyperparameters from these resolvers; every one reads the member's own config (`_root_`):

  ${sweep.rung:FIELD}                 FIELD (name, n_layer, d_model, n_head, ...) of this member's rung of
                                      sweep.ladder: sweep.size names it, or (IsoFLOP) the rung nearest the
                                      expected optimum N_opt = sqrt(C / (6 k)), k = sweep.optimum_tokens_per_param,
                                      moved by sweep.offset rungs
  ${sweep.n:}                         N, the member's non-embedding parameters (research/flops.py)
  ${sweep.lr:LR0,N0,EXP}              learning rate LR0 x (N / N0)^EXP            (lr_rule)
  ${sweep.batch:B0,N0,EXP,LO,HI}      sequences per batch: B0 x (N / N0)^EXP rounded to a power of two,
                                      clipped to [LO, HI]                           (batch_rule)
  ${sweep.batch_of_tokens:T}          sequences holding about T tokens (a paper's batch size in tokens)
  ${sweep.warmup:TOKENS,FRACTION}     warmup steps: TOKENS worth of batches, never more than FRACTION of the
                                      run's steps                                   (warmup_rule)
  ${sweep.isoflop_tokens:}            D = C / (6 N) for C = sweep.compute
  ${sweep.per_batch:SEQUENCES}        batches holding SEQUENCES sequences (a fixed eval set for any batch size)
  ${sweep.sci:X}                      a compact label: 3e+11 -> 3e11 (run names)
  ${sweep.budget:}                    the budget as a run-name label: tpp20, D2.5e6 or S1000

`python -m research.sweep law EXPERIMENT` prints the law an experiment is fitted with (the Makefile reads
it); `python -m research.sweep report SWEEP_DIR` prints where the summary, fit and figures are.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from research.config import ConfigError, ModelConfig, total_steps, train_seq_len

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("sweep")

# ---------------------------------------------------------------------------------------------
# Per-size rules (pure functions; the resolvers below feed them the member's N and budget)


def lr_rule(n: float, ref_lr: float, ref_n: float, exponent: float = -1 / 3) -> float:
    """Peak learning rate ref_lr x (N / ref_n)^exponent, to 4 significant digits.

    With exponent -1/3 the rate falls as the cube root of N: 8x the parameters, half the rate. Tuned
    AdamW rates fall with model size (Kaplan et al. 2020's appendix fit; Porian et al. 2024's scaling law
    for the optimal rate; GPT-3's table falls from 6e-4 at 125M to 1e-4 at 13B, about N^-0.36).
    """
    return float(f"{ref_lr * (n / ref_n) ** exponent:.4g}")


def batch_rule(n: float, ref_batch: int, ref_n: float, exponent: float = 0.5, lo: int = 1, hi: int = 1 << 20) -> int:
    """Sequences per batch: ref_batch x (N / ref_n)^exponent rounded (in log2) to a power of two, in [lo, hi].

    Larger models tolerate (and need, for throughput) larger batches (Kaplan et al.'s critical batch;
    Porian et al. 2024 fit the optimal batch growing with N); powers of two keep shapes compile-friendly.
    """
    raw = ref_batch * (n / ref_n) ** exponent
    return int(min(max(2 ** round(math.log2(raw)), lo), hi))


def warmup_rule(steps: int, batch_tokens: int, warmup_tokens: float, max_fraction: float) -> int:
    """Warmup steps covering warmup_tokens, but never more than max_fraction of the run's steps.

    GPT-3 warmed up over a fixed 375M tokens; a fixed warmup is most of a small model's run, which
    Porian et al. 2024 identify as one cause of Kaplan's small-model bias, and they scale the warmup with
    the model (N tokens). The CPU experiments pass ${sweep.n:} as warmup_tokens; the cap keeps the rule
    safe at any size.
    """
    wanted = math.ceil(warmup_tokens / batch_tokens)
    return int(max(0, min(wanted, math.floor(max_fraction * steps))))


def optimum_params(compute: float, tokens_per_param: float = 20.0) -> float:
    """N at the expected compute optimum: C = 6 N D with D = k N gives N = sqrt(C / (6 k))."""
    return math.sqrt(compute / (6.0 * tokens_per_param))


def sci(x: float) -> str:
    """3e+11 -> '3e11', 1.5e+13 -> '1.5e13', 20 -> '20' (labels for run names)."""
    return f"{float(x):.3g}".replace("e+", "e").replace("e0", "e").replace("e-0", "e-")


# ---------------------------------------------------------------------------------------------
# Resolvers


def _model_from(node: Any, **fields: Any) -> ModelConfig:
    """A ModelConfig from a model node's plain values (interpolations dropped) plus `fields`."""
    raw = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else dict(node)
    plain = {k: v for k, v in raw.items() if not (isinstance(v, str) and "${" in v)}
    plain.update(fields)
    return ModelConfig(**plain)


def params_nonembed(m: ModelConfig) -> int:
    from research import flops

    return int(flops.param_counts(m)["params_nonembed"])


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
            out.append((str(name), spec, params_nonembed(_model_from(base, name=str(name), **spec))))
        _LADDERS[key] = sorted(out, key=lambda r: r[2])
    return _LADDERS[key]


def pick_rung(root: Any) -> tuple[str, dict[str, Any], int]:
    rungs = ladder(root)
    sw = root.sweep
    if sw.size is not None:
        for rung in rungs:
            if rung[0] == sw.size:
                return rung
        raise ConfigError(f"sweep.size={sw.size} is not a rung of sweep.ladder; choose one of "
                          f"{', '.join(r[0] for r in rungs)}.")  # fmt: skip
    if sw.compute is None:
        raise ConfigError(
            "a ${sweep.rung:...} member needs sweep.size (a ladder) or sweep.compute (an IsoFLOP grid); set one."
        )
    target = math.log(optimum_params(float(sw.compute), float(sw.optimum_tokens_per_param)))
    centre = min(range(len(rungs)), key=lambda i: abs(math.log(rungs[i][2]) - target))
    i = centre + int(sw.offset)
    if not 0 <= i < len(rungs):
        raise ConfigError(
            f"sweep.offset={sw.offset} at sweep.compute={sw.compute:g} falls off sweep.ladder (the optimum is rung "
            f"{rungs[centre][0]}, {centre} from the bottom, {len(rungs) - 1 - centre} from the top); add rungs or narrow the offsets."
        )
    return rungs[i]


def _rung(field_name: str, *, _root_: Any) -> Any:
    name, spec, _ = pick_rung(_root_)
    if field_name == "name":
        return name
    if field_name not in spec:
        return None  # e.g. d_ff: null -> 4 x d_model
    return spec[field_name]


def _n(*, _root_: Any) -> int:
    return params_nonembed(ModelConfig(**OmegaConf.to_container(_root_.model, resolve=True)))  # type: ignore[arg-type]


def _lr(ref_lr: float, ref_n: float, exponent: float, *, _root_: Any) -> float:
    return lr_rule(_n(_root_=_root_), float(ref_lr), float(ref_n), float(exponent))


def _batch(ref_batch: int, ref_n: float, exponent: float, lo: int, hi: int, *, _root_: Any) -> int:
    return batch_rule(_n(_root_=_root_), int(ref_batch), float(ref_n), float(exponent), int(lo), int(hi))


def _batch_of_tokens(tokens: float, *, _root_: Any) -> int:
    seq = train_seq_len(_root_)  # type: ignore[arg-type]
    return max(1, round(float(tokens) / seq))


def _warmup(warmup_tokens: float, max_fraction: float, *, _root_: Any) -> int:
    n = _n(_root_=_root_)
    steps = total_steps(_root_, n)  # type: ignore[arg-type]
    return warmup_rule(
        steps, _root_.train.batch_size * train_seq_len(_root_), float(warmup_tokens), float(max_fraction)
    )  # type: ignore[arg-type]


def _isoflop_tokens(*, _root_: Any) -> int:
    c = _root_.sweep.compute
    if c is None:
        raise ConfigError(
            "${sweep.isoflop_tokens:} needs sweep.compute (the budget C in FLOPs); set it in the experiment."
        )
    return int(round(float(c) / (6.0 * _n(_root_=_root_))))


def _budget(*, _root_: Any) -> str:
    """The budget in a run name: tpp20 (tokens per parameter), D2.5e6 (tokens) or S1000 (steps)."""
    tc = _root_.train
    if tc.tokens_per_param is not None:
        return f"tpp{sci(float(tc.tokens_per_param))}"
    if tc.tokens is not None:
        return f"D{sci(float(tc.tokens))}"
    return f"S{tc.steps}"


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
    "sweep.sci": lambda x: sci(float(x)) if isinstance(x, int | float) else str(x),
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# ---------------------------------------------------------------------------------------------
# Members: skip, failure records, hyperparameters for TensorBoard

# sweep.* only picks the member (its shape, budget, rules); the resolved model, data, optim and train
# settings say what it computes, so a completed member differing only in sweep.* (a re-centred grid, a
# longer ladder, another law) is kept.
SKIP_IGNORES = ("sweep.",)

# run_dir -> (status, message), set by experiments/train.py and read by SweepCallback.on_job_end
# (the task function and the callback run in the same process under every launcher).
OUTCOMES: dict[str, tuple[str, str | None]] = {}


def note_outcome(run_dir: Path, status: str, message: str | None = None) -> None:
    OUTCOMES[str(Path(run_dir).resolve())] = (status, message)


def completed_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How a completed member's recorded config differs from this invocation's (what would make it stale)."""
    from research.train.preflight import config_differences

    return [d for d in config_differences(old, new) if not d.startswith(SKIP_IGNORES)]


def record_failure(run_dir: Path, cfg: DictConfig, error: str) -> None:
    """A failed results.json for a member that failed before the train loop wrote one (never overwrites)."""
    from research.train import records

    path = run_dir / "results.json"
    if path.exists():
        return  # the loop's own record, or another run's that must survive
    results = records.empty_results()
    config = _container(cfg)
    train = config.get("train", {}) if isinstance(config, dict) else {}
    model = config.get("model", {}) if isinstance(config, dict) else {}
    results.update(status="failed", error=error, experiment=_plain(train.get("experiment")),
                   run_name=_plain(train.get("run_name")) or run_dir.name, model=_plain(model.get("name")),
                   config=config, git_sha=records.git_sha())  # fmt: skip
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        records.write_json_atomic(path, results)
    except OSError as e:
        log.error("could not write %s: %s", path, e)


def _container(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # the resolution itself failed: keep what was written
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _plain(v: Any) -> Any:
    return None if isinstance(v, str) and "${" in v else v


def member_hparams(cfg: Any) -> dict[str, Any]:
    """The hyperparameters of a member (typed Config) as flat scalars for TensorBoard's HParams dashboard."""
    from research import flops
    from research.config import batch_tokens, warmup_steps

    counts = flops.param_counts(cfg.model)
    steps = total_steps(cfg, counts["params_nonembed"])
    out: dict[str, Any] = {
        "model": cfg.model.name, "n_layer": cfg.model.n_layer, "d_model": cfg.model.d_model,
        "n_head": cfg.model.n_head, "params": counts["params"], "params_nonembed": counts["params_nonembed"],
        "tokens": steps * batch_tokens(cfg), "steps": steps, "batch_size": cfg.train.batch_size,
        "seq_len": train_seq_len(cfg), "batch_tokens": batch_tokens(cfg), "lr": cfg.optim.lr,
        "warmup_steps": warmup_steps(cfg, steps), "schedule": cfg.optim.schedule,
        "weight_decay": cfg.optim.weight_decay, "seed": cfg.train.seed, "data": cfg.data.name,
        "experiment": cfg.train.experiment,
    }  # fmt: skip
    if cfg.train.tokens_per_param is not None:
        out["tokens_per_param"] = float(cfg.train.tokens_per_param)
    if cfg.sweep.compute is not None:
        out["compute"] = float(cfg.sweep.compute)
    return out


# ---------------------------------------------------------------------------------------------
# The Hydra callback (conf/config.yaml: hydra.callbacks.sweep)


def count_members(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper makes of hydra.sweeper.params and the command line."""
    jobs = member_overrides(config)
    return None if jobs is None else len(jobs)


def _is_multirun(config: DictConfig) -> bool:
    from hydra.types import RunMode

    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


def member_overrides(config: DictConfig) -> list[list[str]] | None:
    """Each job's task overrides, in job order, as the basic sweeper makes them (None: not knowable)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        overrides = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
        return [list(job) for batch in batches for job in batch]
    except Exception:
        return None


class CompileAhead:
    """While member k trains, a background thread compiles member k+1's init, train and eval programs into
    JAX's persistent compilation cache; member k+1 then loads them. Local (in-process) sweeps on the CPU
    only: the members of a SLURM sweep start on other machines."""

    def __init__(self, config: DictConfig) -> None:
        self.jobs = member_overrides(config) or []
        self.config_name = str(OmegaConf.select(config, "hydra.job.config_name") or "config")
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.thread: Any = None
        self.result: dict[int, float] = {}  # job number -> compile seconds

    def wait(self, num: int) -> tuple[float, float | None]:
        """Wait for the compile started for job `num`: (seconds waited, seconds the compile took)."""
        t0 = time.perf_counter()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        return time.perf_counter() - t0, self.result.pop(num, None)

    def start(self, num: int) -> None:
        """Compose job `num`'s config here (Hydra is not thread-safe) and compile it in a thread."""
        if not 0 <= num < len(self.jobs):
            return
        try:
            from hydra import compose

            from research.config import to_config
            from research.train.programs import compiled as member_compiled
            from research.train.programs import configure_compilation_cache, precompile

            cfg = to_config(compose(self.config_name, overrides=self.jobs[num]))
            if (_read_json(self.sweep_dir / cfg.train.run_name / "results.json") or {}).get("status") == "completed":
                return  # will be skipped
            configure_compilation_cache()
            member_compiled.clear()
        except Exception as e:  # the member itself reports a bad config
            log.debug("compile ahead of job %d skipped: %s", num, e)
            return

        def work() -> None:
            try:
                member_compiled.wait()  # the current member's own compile first
                self.result[num] = round(precompile(cfg), 3)
            except Exception as e:
                log.debug("compile ahead of job %d failed: %s", num, e)

        self.thread = threading.Thread(target=work, name=f"compile-ahead-{num}", daemon=True)
        self.thread.start()


def _compiles_ahead(config: DictConfig) -> bool:
    """Local (in-process) sweeps on the CPU. On a GPU a member's compile is small next to its training, and
    XLA's GPU autotuner would run kernels on the device the current member is training on."""
    if not str(OmegaConf.select(config, "hydra.launcher._target_") or "").endswith("BasicLauncher"):
        return False
    import jax

    from research import distributed

    distributed.maybe_initialize()  # before any other JAX use (a no-op for one process)
    return jax.process_count() == 1 and jax.default_backend() == "cpu"


class SweepCallback(Callback):
    """Progress lines per member ("[member 3/7] nano_14k-tpp20 ..."), summary.csv at the end of a multirun,
    and (compile_ahead, local sweeps) the next member's programs compiled while the current one trains."""

    def __init__(self, summary: bool = True, compile_ahead: bool = True) -> None:
        self.summary = summary
        self.compile_ahead = compile_ahead
        self.ahead: CompileAhead | None = None
        self._ahead_stats: dict[int, tuple[float, float | None]] = {}
        self.total: int | None = None
        self.started = time.time()
        self._job_started: dict[int, float] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.total = count_members(config)
        self.started = time.time()
        if self.compile_ahead and _compiles_ahead(config):
            self.ahead = CompileAhead(config)
        n = "?" if self.total is None else self.total
        print(f"[sweep] {OmegaConf.select(config, 'train.experiment')}: {n} members -> {config.hydra.sweep.dir}",
              flush=True)  # fmt: skip

    def _label(self, config: DictConfig) -> str:
        num = int(OmegaConf.select(config, "hydra.job.num") or 0) + 1
        return f"[member {num}/{self.total or '?'}]"

    def _left(self, config: DictConfig) -> str:
        if self.total is None:
            return ""
        left = self.total - int(OmegaConf.select(config, "hydra.job.num") or 0) - 1
        return f"; {left} left" if left else "; the last member"

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        num = int(config.hydra.job.num)
        if self.ahead is not None:
            self._ahead_stats[num] = self.ahead.wait(num)  # never two compiles at once
            self.ahead.start(num + 1)
        self._job_started[num] = time.time()
        prior = _read_json(Path(config.hydra.runtime.output_dir) / "results.json") or {}
        if prior.get("status") == "completed":
            return  # most likely skipped; on_job_end says
        try:
            cfg = OmegaConf.to_object(_without_hydra(config))
            hp = member_hparams(cfg)
            what = (f"{hp['model']}: N={hp['params_nonembed']:,} non-embedding params, {hp['tokens']:,} tokens in "
                    f"{hp['steps']:,} steps of {hp['batch_size']}x{hp['seq_len']}, lr {hp['lr']:.3g}, "
                    f"warmup {hp['warmup_steps']}")  # fmt: skip
        except Exception as e:  # the member itself will report a bad config
            what = f"(config does not resolve: {str(e).splitlines()[0]})"
        log.info("%s %s  %s", self._label(config), config.train.run_name if _resolves(config) else "?", what)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        status, message = OUTCOMES.pop(str(run_dir.resolve()), (None, None))
        if self.ahead is not None:  # a member that ended before compiling lets the compile ahead go
            from research.train.programs import compiled as member_compiled

            member_compiled.set()
        rec = _read_json(run_dir / "results.json") or {}
        waited, took_ahead = self._ahead_stats.pop(int(config.hydra.job.num), (0.0, None))
        if took_ahead is not None and status in (None, "completed") and rec.get("status") == "completed":
            from research.train.records import write_json_atomic

            rec.update(compile_ahead_wait_seconds=round(waited, 3), compile_ahead_seconds=took_ahead)
            write_json_atomic(run_dir / "results.json", rec)
        status = status or rec.get("status") or "unknown"
        took = time.time() - self._job_started.pop(int(config.hydra.job.num), time.time())
        if status == "completed":
            tps = rec.get("tokens_per_second")
            detail = (f"val loss {rec.get('final_val_loss', float('nan')):.4f}, "
                      f"{(tps or 0):,.0f} tokens/s, {took:.0f} s")  # fmt: skip
        elif status == "skipped":
            detail = f"completed earlier (val loss {rec.get('final_val_loss') or float('nan'):.4f}); nothing to do"
        else:
            detail = str(message or rec.get("error") or "see train.log").rstrip(".")
        log.info("%s %s %s: %s%s", self._label(config), run_dir.name, status.upper() if status not in
                 ("completed", "skipped") else status, detail, self._left(config))  # fmt: skip

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.ahead is not None:
            self.ahead.wait(-1)
        if not self.summary:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            path, rows = write_summary(sweep_dir)
        except Exception as e:  # the sweep's runs are intact; only the table failed
            print(f"[sweep] could not write summary.csv: {e}", flush=True)
            return
        n_done = sum(r.get("status") == "completed" for r in rows)
        bad = [r for r in rows if r.get("status") != "completed"]
        print(f"[sweep] done in {time.time() - self.started:.0f} s: {len(rows)} members, {n_done} completed"
              f"{f', {len(bad)} not' if bad else ''}; wrote {path}", flush=True)  # fmt: skip
        for r in bad:
            print(f"[sweep]   {r.get('run_dir')}: {str(r.get('status')).upper()}: {r.get('error')}", flush=True)


def _without_hydra(config: DictConfig) -> DictConfig:
    """The task's config, as Hydra hands it to the task function (typed, without the hydra node)."""
    import copy

    from omegaconf import open_dict, read_write

    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _resolves(config: DictConfig) -> bool:
    try:
        _ = config.train.run_name
        return True
    except Exception:
        return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_summary(sweep_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """SWEEP_DIR/summary.csv: one row per member, the scalar fields of its results.json (analysis/results.py)."""
    from analysis.results import write_summary as write

    path, _, rows = write(sweep_dir)
    return path, rows


# ---------------------------------------------------------------------------------------------
# CLI for the Makefile


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
        print(f"{len(rows) - len(done)} member(s) did not complete; fix the cause and rerun `make sweep` (finished "
              "members are kept, interrupted ones resume, failed ones rerun).")  # fmt: skip
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("law", help="the law an experiment is fitted with").add_argument("experiment")
    rep = sub.add_parser("report", help="summary.csv, fit and figure paths of a sweep directory")
    rep.add_argument("sweep_dir")
    rep.add_argument("--fit", help="fit directory (default SWEEP_DIR/fit)")
    args = p.parse_args(argv)
    try:
        if args.command == "law":
            print(experiment_law(args.experiment))
            return 0
        return report(Path(args.sweep_dir), Path(args.fit) if args.fit else None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
