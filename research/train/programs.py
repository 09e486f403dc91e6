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
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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

    def batch_struct(self) -> jax.ShapeDtypeStruct:
        shape = (self.batch_size, self.budget.seq_len + 1)
        return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding)

    def compile(self) -> tuple[Any, Any, Any]:
        """(init, train_step, eval_step) compiled for the run's shapes (or loaded from the cache)."""
        with rule_table.activate(self.mesh, self.rules):
            init = self.init.lower(jax.random.key(0)).compile()
        args = [self.target, self.batch_struct()]
        if self.poison:
            args.append(jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(self.mesh, PartitionSpec())))
        train_step = self.train_step.lower(*args).compile()
        eval_step = self.eval_step.lower(self.target.params, self.batch_struct()).compile()
        return init, train_step, eval_step

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
        }


def build(cfg: Config, *, devices: Sequence[Any] | None = None) -> Programs:
    """The run's kernels, mesh, shardings, optimizer and jitted programs (nothing compiled yet); cfg must be
    validated (research/config/validate.py)."""
    train = cfg.train
    b = budget(cfg)
    schedule = lr_schedule(cfg.optim, b.steps, b.warmup)
    tx = build_optimizer(cfg.optim, schedule)
    mesh = make_mesh(cfg.mesh, devices)
    rules = rule_table.make_rules(cfg.mesh.rules)
    platform = jax.default_backend()
    kernels = select.select(cfg.model, platform, heads_shards=rule_table.logical_shards(mesh.shape, rules, "heads"))
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
    )


def precompile(cfg: Config) -> float:
    """Compile a run's init, train and eval programs into the persistent compilation cache (what the run's
    own start-up then loads instead of compiling); returns the seconds it took."""
    t0 = time.perf_counter()
    build(cfg).compile()
    return time.perf_counter() - t0
