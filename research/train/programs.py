"""The compiled programs of a run: state init, train step, eval step; the one place they are assembled.

    p = build(cfg)                  # kernels, mesh, shardings, optimizer, jitted init/step/eval
    init, train_step, eval_step = p.compile()

The training loop, the benchmark, a sweep's compile-ahead of its next member and the tests all build
them here, so they run the same HLO and a member finds its executables in JAX's persistent compilation
cache. This is where the platform is read: the kernels are chosen once (research/ops/select.py) and
travel in the programs; the CPU's streams (research/cpu/streams.py) wrap the step's gradient here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research import memory_fit
from research.budget import Budget, budget
from research.checkpoint import restore_target
from research.config.schema import Config
from research.cpu.streams import resolve_streams, with_streams
from research.ops import select
from research.ops.select import Kernels
from research.parallel import rules as rule_table
from research.parallel.mesh import make_mesh
from research.train.guards import GuardConfig
from research.train.optimizer import build_optimizer, lr_schedule
from research.train.state import TrainState, graphdef_of, init_fn, state_shardings
from research.train.step import loss_and_grads, make_eval_step, make_train_step

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("train")


def configure_compilation_cache() -> None:
    """JAX's persistent compilation cache in the project (.cache/jax unless JAX_COMPILATION_CACHE_DIR says
    otherwise), caching even the sub-second compiles of CPU-sized models, so reruns, repeated shapes and a
    sweep's compile-ahead load executables instead of compiling them."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(ROOT / ".cache" / "jax")
    jax.config.update("jax_compilation_cache_dir", cache)
    min_seconds = float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@dataclasses.dataclass
class Programs:
    budget: Budget
    kernels: Kernels
    streams: int  # independent sub-batches per (micro)batch in the train step (resolved from train.streams)
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    mesh: Mesh
    rules: dict[str, Any]
    shardings: TrainState  # NamedSharding per leaf
    target: TrainState  # ShapeDtypeStructs with those shardings (restore target, compile signature)
    graphdef: nnx.GraphDef
    batch_sharding: NamedSharding
    batch_size: int
    init: Any  # jit(init, out_shardings): seed key -> TrainState
    train_step: Any  # jit: (state, tokens[, scale]) -> (state, metrics)
    eval_step: Any  # jit: (params, tokens) -> per-sequence loss
    poison: bool  # the train step takes the test hook's loss scale (train.debug_poison_steps)
    microbatches: int  # gradient accumulation in the train step (train.microbatches, resolved)
    remat: str  # model.remat, resolved
    fit: memory_fit.Fit | None  # the automatic choice (train.microbatches=auto), else None
    config: Config  # the config as given (before the automatic choice), for a rebuild
    devices: Sequence[Any] | None
    platform: str

    def batch_struct(self) -> jax.ShapeDtypeStruct:
        shape = (self.batch_size, self.budget.seq_len + 1)
        return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding)

    def lower(self, platforms: tuple[str, ...] | None = None) -> tuple[Any, Any, Any]:
        """(init, train_step, eval_step) lowered for the run's shapes; platforms: lower for those instead of this
        backend (("cuda",) on a CPU machine: the GPU program, checked without a GPU)."""
        kw = {"lowering_platforms": platforms} if platforms else {}
        with rule_table.activate(self.mesh, self.rules):
            init = self.init.trace(jax.random.key(0)).lower(**kw)
        args = [self.target, self.batch_struct()]
        if self.poison:
            args.append(jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(self.mesh, PartitionSpec())))
        train_step = self.train_step.trace(*args).lower(**kw)
        eval_step = self.eval_step.trace(self.target.params, self.batch_struct()).lower(**kw)
        return init, train_step, eval_step

    def compile(self) -> tuple[Any, Any, Any]:
        """(init, train_step, eval_step) compiled for the run's shapes (or loaded from the cache)."""
        init, train_step, eval_step = self.lower()
        return init.compile(), train_step.compile(), eval_step.compile()

    def init_state(self, seed: int) -> TrainState:
        """A fresh state, born sharded (the init traced in the mesh context)."""
        with rule_table.activate(self.mesh, self.rules):
            return self.init(jax.random.key(seed))

    def record(self) -> dict[str, Any]:
        """The kernel and step choices results.json records."""
        return {
            "attention_impl": select.attention_impl(self.kernels),
            "streams": self.streams,
            "kernels": self.kernels.record(),
            "microbatches": self.microbatches,
            "remat": self.remat,
            "memory_fit": self.fit.record() if self.fit else None,
        }


def build(
    cfg: Config,
    *,
    devices: Sequence[Any] | None = None,
    platform: str | None = None,
    fit: memory_fit.Fit | None = None,
) -> Programs:
    """The run's kernels, mesh, shardings, optimizer and jitted programs (nothing compiled yet); cfg must be
    validated (research/config/validate.py). platform: another platform than this backend's to build for (e.g.
    "cuda" on a CPU machine, where the programs can be lowered but not compiled). Under train.microbatches=auto
    the microbatches and remat are chosen here (`fit`: a choice already made)."""
    given = cfg
    b = budget(cfg)
    schedule = lr_schedule(cfg.optim, b.steps, b.warmup)
    tx = build_optimizer(cfg.optim, schedule)
    mesh = make_mesh(cfg.mesh, devices)
    rules = rule_table.make_rules(cfg.mesh.rules)
    here = jax.default_backend()
    platform = platform or here
    heads = rule_table.logical_shards(mesh.shape, rules, "heads")
    kernels = select.select(cfg.model, platform, heads_shards=heads, lower_only=_name(platform) != _name(here))
    if memory_fit.is_auto(cfg.train):
        if fit is None:
            usable, source = usable_memory(cfg, mesh.devices.flat[0])
            fit = memory_fit.choose(cfg, dict(mesh.shape), usable, source, attention_impl=_planned_attention(kernels))
        cfg = memory_fit.apply(cfg, fit)
    else:
        fit = None  # a fixed train.microbatches is the user's
    train = cfg.train
    init = init_fn(cfg.model, kernels, tx)
    abstract = jax.eval_shape(init, jax.random.key(train.seed))
    shardings = state_shardings(abstract, mesh, rules)
    graphdef = graphdef_of(cfg.model, kernels)
    batch_sh = rule_table.batch_sharding(mesh, rules)
    rows_per_device = train.batch_size // (rule_table.data_shards(mesh, rules) * train.microbatches)
    streams = resolve_streams(train.streams, rows_per_device, b.seq_len, platform, cfg.model.compute_dtype)
    poison = bool(train.debug_poison_steps)
    with rule_table.activate(mesh, rules):  # the steps keep this context for their traces
        train_step = make_train_step(
            with_streams(loss_and_grads(graphdef), streams),
            tx,
            schedule,
            shardings,
            batch_sh,
            microbatches=train.microbatches,
            guard=GuardConfig.from_train(train),
            poison=poison,
        )
        eval_step = make_eval_step(graphdef, shardings.params, batch_sh)
    return Programs(
        budget=b,
        kernels=kernels,
        streams=streams,
        schedule=schedule,
        tx=tx,
        mesh=mesh,
        rules=rules,
        shardings=shardings,
        target=restore_target(abstract, shardings),
        graphdef=graphdef,
        batch_sharding=batch_sh,
        batch_size=train.batch_size,
        init=jax.jit(init, out_shardings=shardings),
        train_step=train_step,
        eval_step=eval_step,
        poison=poison,
        microbatches=train.microbatches,
        remat=cfg.model.remat,
        fit=fit,
        config=given,
        devices=devices,
        platform=platform,
    )


def precompile(cfg: Config) -> float:
    """Compile a run's init, train and eval programs into the persistent compilation cache (what the run's
    own start-up then loads instead of compiling); returns the seconds it took."""
    t0 = time.perf_counter()
    compile_fitted(build(cfg))
    return time.perf_counter() - t0


def _name(platform: str) -> str:
    return "gpu" if platform in ("gpu", "cuda") else platform


def _planned_attention(kernels: Kernels) -> str:
    """The attention the memory plan assumes: cudnn's only when it runs (the CPU's blocked kernel as xla's)."""
    return "cudnn" if kernels.attention == "cudnn" else "xla"


def usable_memory(cfg: Config, device: Any) -> tuple[int | None, str]:
    """(bytes one device may use, where that figure comes from): train.memory_budget_gb when set, else the
    device allocator's limit (a GPU's preallocated pool: 75% of its memory unless XLA_PYTHON_CLIENT_MEM_FRACTION
    says otherwise), else None (a CPU reports none)."""
    if cfg.train.memory_budget_gb is not None:
        return memory_fit.from_budget(cfg.train.memory_budget_gb)
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} allocator limit"
    return None, f"no memory limit is known for {device.platform} devices (set train.memory_budget_gb)"


def xla_bytes(compiled: Any) -> int | None:
    """XLA's own memory figure for one device of a compiled program (arguments + outputs - donated + temporaries);
    None where the backend reports none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return int(total) if total > 0 else None


def compile_fitted(p: Programs, compile_with: Callable[[Programs], Any] | None = None) -> tuple[Programs, Any]:
    """p compiled (`compile_with(p)`, default p.compile(); its train step is [1] of a tuple, else the result).
    Under train.microbatches=auto XLA's figure for the compiled train step confirms the planned choice; where
    it does not fit, the choice moves along the candidates (research/memory_fit.py) by the factor XLA exceeded
    the plan, and the programs are rebuilt. One log line says what was chosen and why."""
    compile_with = compile_with or (lambda q: q.compile())
    compiled = compile_with(p)
    notes = []
    while p.fit is not None and p.fit.usable_bytes is not None:
        step = compiled[1] if isinstance(compiled, tuple) else compiled
        measured = xla_bytes(step)
        if measured is None or measured <= p.fit.usable_bytes:
            tail = f"; XLA's figure {memory_fit.size(measured)} fits too" if measured is not None else ""
            tail += f" ({'; '.join(notes)}, over the budget)" if notes else ""
            p.fit = dataclasses.replace(p.fit, xla_bytes=measured, reason=p.fit.reason + tail)
            break
        c = p.fit.chosen
        notes.append(f"XLA's figure for {c.microbatches} microbatches, remat={c.remat} was {memory_fit.size(measured)}")
        scale = measured / c.planned_bytes
        fit = memory_fit.choose(
            p.config,
            dict(p.mesh.shape),
            p.fit.usable_bytes,
            p.fit.budget,
            after=p.fit.index,
            scale=scale,
            attention_impl=_planned_attention(p.kernels),
        )
        p = build(p.config, devices=p.devices, platform=p.platform, fit=fit)
        compiled = compile_with(p)
    if p.fit is not None:
        log.info("memory fit (train.microbatches=auto): %s", p.fit.reason)
    return p, compiled
