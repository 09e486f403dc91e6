"""The compiled programs of a run: state init, train step, eval step.

The training loop and a sweep compiling its next member ahead (research/sweep.py) both build them here,
so the two produce the same HLO and the member finds its executables in JAX's persistent compilation
cache. The steps are made inside the mesh context and trace in it, so the model's activation sharding
constraints apply.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research import flops, sharding
from research.checkpoint import restore_target
from research.config import Config, total_steps, train_seq_len, warmup_steps
from research.train.guards import GuardConfig
from research.train.optimizer import build_optimizer, lr_schedule
from research.train.state import TrainState, _init_fn, graphdef_of, state_shardings
from research.train.step import make_eval_step, make_train_step, resolve_streams

ROOT = Path(__file__).resolve().parents[2]

# Set by the training loop once its programs are compiled: a sweep's compile-ahead of the next member waits
# for it, so the two compiles never share the CPU.
compiled = threading.Event()


def configure_compilation_cache() -> None:
    """JAX's persistent compilation cache in the project (.cache/jax unless JAX_COMPILATION_CACHE_DIR says
    otherwise), caching even the sub-second compiles of CPU-sized models, so reruns, repeated shapes and a
    sweep's compile-ahead load executables instead of compiling them."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(ROOT / ".cache" / "jax")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")))  # fmt: skip
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@dataclasses.dataclass
class Programs:
    steps: int
    warmup: int
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    mesh: Mesh
    rules: dict[str, Any]
    shardings: TrainState  # NamedSharding per leaf
    target: TrainState  # ShapeDtypeStructs with those shardings (restore target, compile signature)
    graphdef: nnx.GraphDef
    batch_sharding: NamedSharding
    init: Any  # jit(init, out_shardings): seed key -> TrainState
    train_step: Any  # jit: (state, tokens[, scale]) -> (state, metrics)
    eval_step: Any  # jit: (params, tokens) -> per-sequence loss
    poison: bool
    streams: int  # independent sub-batches per (micro)batch in the train step (resolved from train.streams)

    def batch_struct(self, batch: int, seq_len: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32, sharding=self.batch_sharding)

    def compile_train_step(self, batch: int, seq_len: int) -> Any:
        args = [self.target, self.batch_struct(batch, seq_len)]
        if self.poison:
            args.append(jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(self.mesh, PartitionSpec())))
        return self.train_step.lower(*args).compile()

    def compile_eval_step(self, batch: int, seq_len: int) -> Any:
        return self.eval_step.lower(self.target.params, self.batch_struct(batch, seq_len)).compile()

    def init_state(self, seed: int) -> TrainState:
        with sharding.activate(self.mesh, self.rules):
            return self.init(jax.random.key(seed))


def build(cfg: Config, poison: bool = False) -> Programs:
    """The run's optimizer, shardings and jitted programs (nothing compiled yet); cfg must be validated."""
    tc = cfg.train
    steps = total_steps(cfg, flops.param_counts(cfg.model)["params_nonembed"])
    warmup = warmup_steps(cfg, steps)
    schedule = lr_schedule(cfg.optim, steps, warmup)
    tx = build_optimizer(cfg.optim, schedule)
    mesh = sharding.make_mesh(cfg.mesh)
    rules = dict(sharding.make_rules(cfg.mesh.rules))
    init = _init_fn(cfg.model, tx)
    abstract = jax.eval_shape(init, jax.random.key(tc.seed))
    shardings = state_shardings(abstract, mesh, rules)
    graphdef = graphdef_of(cfg.model)
    batch_sh = sharding.batch_sharding(mesh, rules)
    rows_per_device = tc.batch_size // (sharding.data_shards(mesh, rules) * tc.microbatches)
    streams = resolve_streams(tc.streams, rows_per_device, train_seq_len(cfg), cfg.model.compute_dtype)
    with sharding.activate(mesh, rules):  # the steps keep this context for their traces
        train_step = make_train_step(
            graphdef, tx, schedule, shardings, batch_sh, tc.microbatches, GuardConfig.from_train(tc), poison,
            streams,
        )
        eval_step = make_eval_step(graphdef, shardings.params, batch_sh)
    return Programs(
        steps=steps, warmup=warmup, schedule=schedule, tx=tx, mesh=mesh, rules=rules, shardings=shardings,
        target=restore_target(abstract, shardings), graphdef=graphdef, batch_sharding=batch_sh,
        init=jax.jit(init, out_shardings=shardings), train_step=train_step,
        eval_step=eval_step, poison=poison, streams=streams,
    )  # fmt: skip


def precompile(cfg: Config) -> float:
    """Compile a run's init, train and eval programs into the persistent compilation cache (what the
    run's own start-up then loads instead of compiling); returns the seconds it took."""
    t0 = time.perf_counter()
    p = build(cfg, poison=bool(cfg.train.debug_poison_steps))
    seq_len = train_seq_len(cfg)
    with sharding.activate(p.mesh, p.rules):
        p.init.lower(jax.random.key(cfg.train.seed)).compile()
    p.compile_train_step(cfg.train.batch_size, seq_len)
    p.compile_eval_step(cfg.train.batch_size, seq_len)
    return time.perf_counter() - t0
