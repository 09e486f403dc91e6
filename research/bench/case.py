"""One benchmark case: the training loop's own programs (research/train/programs.py) on synthetic tokens
already on the devices, timed after warm-up, with the FLOP conventions of research/flops.py.

FLOP conventions: "6N" = 6 x non-embedding parameters (Kaplan's C = 6ND); "model" = 6 x (all parameters but
positions) + 12 L H Q T attention (PaLM / nanoGPT's estimate_mfu). MFU = achieved FLOP/s over the device
peak (research/flops.py's table; the CPU peak is an estimate).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from research import data as data_lib
from research import flops
from research.config.derived import d_head
from research.config.schema import Config, DataConfig
from research.parallel.mesh import describe
from research.train.programs import build, compile_fitted, xla_bytes

ROOT = Path(__file__).resolve().parents[2]


def bench_case(cfg: Config, *, steps: int, warmup: int, loader: bool = True, cached_compile: bool = False) -> dict:
    """Time `steps` train steps of the config's programs after `warmup` untimed ones (cfg.train.steps covers
    both, plus one); every step is timed to completion."""
    p = build(cfg)
    model, train, b = cfg.model, cfg.train, p.budget
    t0 = time.perf_counter()
    state = p.init_state(train.seed)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    shape = (train.batch_size, b.seq_len + 1)
    tokens = [
        jax.device_put(rng.integers(0, model.vocab_size, size=shape, dtype=np.int32), p.batch_sharding)
        for _ in range(2)
    ]
    t0 = time.perf_counter()
    # traces in the mesh context the step was made in; train.microbatches=auto: XLA's figure confirms the choice
    p, compiled = compile_fitted(p, lambda q: q.train_step.lower(state, tokens[0]).compile())
    compile_s = time.perf_counter() - t0
    cached_s = cached_compile_time(p.train_step, state, tokens[0]) if cached_compile else None

    for i in range(warmup):
        state, metrics = compiled(state, tokens[i % 2])
    jax.block_until_ready((state, metrics) if warmup else state)
    times = []
    for i in range(steps):  # each step timed to completion (the loop syncs only at log steps; this is stricter)
        t0 = time.perf_counter()
        state, metrics = compiled(state, tokens[i % 2])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tps = train.batch_size * b.seq_len / step_s
    kind = jax.devices()[0].device_kind
    peak = flops.device_peak_flops(kind, model.compute_dtype, jax.device_count())
    out: dict[str, Any] = {
        "model": model.name,
        "mesh": describe(p.mesh),
        "batch": train.batch_size,
        "seq_len": b.seq_len,
        "microbatches": p.microbatches,
        "memory_fit": p.fit.reason if p.fit else None,
        "streams": p.streams,
        "compute_dtype": model.compute_dtype,
        "param_dtype": model.param_dtype,
        "attention_requested": model.attention_impl,
        "attention_impl": p.record()["attention_impl"],
        "kernels": p.kernels.record(),
        "remat": p.remat,
        "scan_layers": model.scan_layers,
        "params": b.params,
        "n_layer": model.n_layer,
        "d_model": model.d_model,
        "n_head": model.n_head,
        "d_head": d_head(model),
        "device": kind,
        "platform": jax.devices()[0].platform,
        "n_devices": jax.device_count(),
        "init_s": init_s,
        "compile_s": compile_s,
        "compile_cached_s": cached_s,
        "step_s": step_s,
        "step_s_min": float(min(times)),
        "steps_timed": steps,
        "tokens_per_s": tps,
        "loss": float(metrics["loss"]),
        "peak_flops": peak,
        "xla_bytes": xla_bytes(compiled),  # XLA's figure for the train step on one device
        "peak_bytes": peak_device_bytes(),  # the allocator's high-water mark over the whole case (GPU; None on CPU)
    }
    fpt = flops.flops_per_token(model, b.seq_len)
    for conv, key in (("model", "flops_per_token"), ("6n", "flops_per_token_6n")):
        out[f"flops_per_token_{conv}"] = fpt[key]
        out[f"tflops_{conv}"] = tps * fpt[key] / 1e12
        out[f"mfu_{conv}"] = flops.mfu(tps, fpt[key], peak)
    if loader:
        out.update(loader_throughput(train.batch_size, b.seq_len))
    return out


def peak_device_bytes() -> int | None:
    """The most bytes the first device's allocator has held in this process (None where it keeps no count)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return None
    return stats.get("peak_bytes_in_use")


def cached_compile_time(step: Any, *args: Any) -> float:
    """Seconds to trace, lower and compile `step` again from JAX's persistent compilation cache (a re-run of
    the same job): the entry is written to a fresh folder, every in-memory cache cleared, the compile timed.
    Raises if the second compile did not hit the cache, so a miss is never reported as a cached time."""
    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    hits: list[str] = []

    def on_event(event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    with tempfile.TemporaryDirectory(prefix="bench-jax-cache-") as cache_dir:
        for name, value in zip(names, (True, cache_dir, 0.0), strict=True):
            jax.config.update(name, value)
        compilation_cache.reset_cache()
        jax.monitoring.register_event_listener(on_event)
        try:
            jax.clear_caches()  # else the cold compile's in-memory executable answers and nothing is written
            step.lower(*args).compile()  # writes the entry
            jax.clear_caches()
            t0 = time.perf_counter()
            step.lower(*args).compile()
            seconds = time.perf_counter() - t0
        finally:
            jax.monitoring.unregister_event_listener(on_event)
            for name, value in saved.items():
                jax.config.update(name, value)
            compilation_cache.reset_cache()
    if not hits:
        raise RuntimeError("the re-compile missed JAX's persistent compilation cache; no cached time to report.")
    return seconds


def loader_throughput(batch: int, seq_len: int, seconds: float = 1.0) -> dict[str, Any]:
    """Tokens/s of research/data's train loader over prepared data (the fixture corpus, vocab 384)."""
    try:
        cfg = DataConfig(
            name="bench-fixture",
            sources=[str(ROOT / "tests" / "fixtures" / "corpus")],
            vocab_size=384,
            cache_dir=str(ROOT / ".cache" / "bench-data"),
            val_fraction=0.2,
        )
        ds = data_lib.prepare(cfg, verbose=False)
        quiet = logging.getLogger("research.data")
        level, quiet.level = quiet.level, logging.ERROR  # the small corpus repeats; that warning is noise here
        try:
            it = data_lib.train_loader(ds, seq_len=seq_len, global_batch=batch, seed=0)
            for _ in range(3):
                next(it)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds or n < 10:
                next(it)
                n += 1
            return {"loader_tokens_per_s": n * batch * seq_len / (time.perf_counter() - t0)}
        finally:
            quiet.setLevel(level)
    except Exception as e:  # noqa: BLE001 - report, do not fail the step figures
        return {"loader_tokens_per_s": None, "loader_error": f"{type(e).__name__}: {e}"}
