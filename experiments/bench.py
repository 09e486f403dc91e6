"""Time the jitted train step: compile time, step time, tokens/s, TFLOP/s and MFU (both conventions).

    python experiments/bench.py                          # preset by device: gpu -> gpt2_small, else the CPU set
    python experiments/bench.py --preset cpu             # nano_xl 16x128, nanogpt_bench_s/m 16x256 (float32)
    python experiments/bench.py --preset gpu             # gpt2_small 32x1024, bf16 compute, cuDNN attention
    python experiments/bench.py --model nano_m --mesh fsdp --batch 32 --seq-len 128 --steps 10 \\
        --set model.compute_dtype=bfloat16 --set model.remat=full --json bench.json
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench.py --model nano_s --mesh fsdp_tp

One case = one model config (conf/model/NAME.yaml), mesh (conf/mesh/NAME.yaml), global batch and
window. The step is the training loop's own (research/train: parameters and AdamW state born sharded,
explicit in/out shardings, donated state); batches are synthetic tokens already on the devices, so
the figure is the step alone. The data loader's throughput over prepared data (the test fixture
corpus, always present) is printed next to what the step consumes.

FLOP conventions (research/flops.py): "6N" = 6 x non-embedding parameters (Kaplan's C = 6ND);
"model" = 6 x (all parameters but positions) + 12 L H Q T attention (PaLM / nanoGPT's estimate_mfu).
MFU = achieved FLOP/s over the device peak (research/flops.py's table; the CPU peak is an estimate).

Hydra-free on purpose (plain YAML reads of conf/), so it runs on a bare accelerator image; the package
still imports research.config, which needs hydra-core and omegaconf: see `make bench-wheels` and
experiments/bench_device.sh for the one-command GPU run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench")

PRESETS: dict[str, list[dict[str, Any]]] = {
    # CPU: a nano ladder rung and the two nanoGPT-like shapes of issue #8, each in mixed precision (bf16
    # matmuls, float32 master weights, softmax and residual stream: the fast setting on CPUs with native bf16
    # dot products) and in plain float32, the precision of the PyTorch reference.
    "cpu": [
        dict(model="nano_xl", batch=16, seq_len=128, steps=5, warmup=1),
        dict(model="nanogpt_bench_s", batch=16, seq_len=256, steps=20, warmup=2, sets=["model.compute_dtype=bfloat16"]),
        dict(model="nanogpt_bench_m", batch=16, seq_len=256, steps=6, warmup=2, sets=["model.compute_dtype=bfloat16"]),
        dict(model="nanogpt_bench_s", batch=16, seq_len=256, steps=10, warmup=2),
        dict(model="nanogpt_bench_m", batch=16, seq_len=256, steps=3, warmup=1),
    ],
    # One GPU: GPT-2 small at its full context, bf16 matmuls, cuDNN flash attention, vocab padded to 128.
    "gpu": [
        dict(model="gpt2_small", batch=32, seq_len=1024, steps=20, warmup=3,
             sets=["model.compute_dtype=bfloat16", "model.attention_impl=cudnn", "model.vocab_pad_multiple=128"],
             cached_compile=True),
    ],
}  # fmt: skip


# Issue #8's reference on the 2-core CPU: PyTorch 2.13 eager, float32, non-fused AdamW, 2 threads, tcmalloc,
# batch 16 x 256 (scripts/torch_reference.py measures it live; scripts/perf_cpu.sh side by side).
PYTORCH_CPU_TOKENS_PER_S = {"nanogpt_bench_s": 15_900, "nanogpt_bench_m": 2_100}


def pytorch_now(model: str, steps: int) -> dict[str, Any] | None:
    """scripts/torch_reference.py for a nanogpt_bench shape, run now with this process's allocator (LD_PRELOAD):
    this machine's speed drifts by up to 1.6x, so the fair ratio is the one taken in the same minute."""
    import importlib.util
    import re
    import subprocess

    shape = {"nanogpt_bench_s": "s", "nanogpt_bench_m": "m"}.get(model)
    if shape is None or importlib.util.find_spec("torch") is None:
        return None
    cmd = [sys.executable, str(ROOT / "scripts" / "torch_reference.py"), shape, "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    m = re.search(r"(tcmalloc|glibc malloc).*?([\d,]+) tokens/s \(best ([\d,]+)\)", out.stdout)
    if out.returncode or not m:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]}
    return {"allocator": m.group(1), "tokens_per_s": float(m.group(2).replace(",", "")),
            "best_tokens_per_s": float(m.group(3).replace(",", ""))}  # fmt: skip


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: XLA's CPU kernels then run bf16 matmuls at about twice the float32 rate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---------------------------------------------------------------------------------------------
# Config without Hydra: conf/<group>/<name>.yaml fields (minus `defaults`) into the dataclasses.


def load_group(group: str, name: str, sets: list[str]) -> Any:
    import yaml

    from research.config import MeshConfig, ModelConfig

    cls = {"model": ModelConfig, "mesh": MeshConfig}[group]
    path = ROOT / "conf" / group / f"{name}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise SystemExit(f"error: no {group} config {name!r}; choose one of {names}.")
    fields = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
    known = {f.name for f in dataclasses.fields(cls)}
    for item in sets:
        key, _, value = item.partition("=")
        g, _, field = key.partition(".")
        if g != group:
            continue
        if field.startswith("rules."):
            fields.setdefault("rules", {})[field[len("rules.") :]] = yaml.safe_load(value)
            continue
        if field not in known:
            raise SystemExit(f"error: --set {item}: {group} has no field {field!r}.")
        fields[field] = yaml.safe_load(value)
    return cls(**fields)


# ---------------------------------------------------------------------------------------------
# One case


def bench_case(
    model_name: str, mesh_name: str, batch: int, seq_len: int, steps: int, warmup: int, sets: list[str],
    microbatches: int = 1, loader: bool = True, streams: int | None = None, cached_compile: bool = False,
) -> dict[str, Any]:  # fmt: skip
    import jax
    import numpy as np

    from research import flops, sharding
    from research.config import OptimConfig, d_head
    from research.train.optimizer import build_optimizer, lr_schedule
    from research.train.state import graphdef_of, init_state
    from research.train.step import make_train_step, resolve_streams

    m = load_group("model", model_name, sets)
    if seq_len > m.seq_len:
        raise SystemExit(f"error: --seq-len {seq_len} is above {m.name}'s context {m.seq_len}.")
    mesh_cfg = load_group("mesh", mesh_name, sets)
    mesh = sharding.make_mesh(mesh_cfg)
    rules = sharding.make_rules(mesh_cfg.rules)
    shards = sharding.data_shards(mesh, rules)
    streams = resolve_streams(streams, batch // (shards * microbatches), seq_len, m.compute_dtype)
    if batch % (shards * microbatches * streams):
        raise SystemExit(
            f"error: --batch {batch} is not divisible by the {shards} data shards x {microbatches} microbatches"
            f" x {streams} streams; pick a multiple of {shards * microbatches * streams}."
        )
    attention = sharding.resolve_attention_impl(m)  # warns (once) when cuDNN was asked for and cannot run

    optim = OptimConfig()
    total = warmup + steps + 1
    schedule = lr_schedule(optim, total, 1)
    tx = build_optimizer(optim, schedule)
    t0 = time.perf_counter()
    state, shardings = init_state(m, tx, 0, mesh, rules)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    graphdef = graphdef_of(m)
    batch_sh = sharding.batch_sharding(mesh, rules)
    with sharding.activate(mesh, rules):
        step = make_train_step(graphdef, tx, schedule, shardings, batch_sh, microbatches, streams=streams)

    rng = np.random.default_rng(0)
    tokens = [
        jax.device_put(rng.integers(0, m.vocab_size, size=(batch, seq_len + 1), dtype=np.int32), batch_sh)
        for _ in range(2)
    ]
    t0 = time.perf_counter()
    compiled = step.lower(state, tokens[0]).compile()  # traces in the mesh context the step was made in
    compile_s = time.perf_counter() - t0
    cached_s = cached_compile_time(step, state, tokens[0]) if cached_compile else None

    for i in range(warmup):
        state, metrics = compiled(state, tokens[i % 2])
    jax.block_until_ready((state, metrics) if warmup else state)
    times = []
    for i in range(steps):  # each step timed to completion (the loop syncs only at log steps; this is stricter)
        t0 = time.perf_counter()
        state, metrics = compiled(state, tokens[i % 2])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    loss = float(metrics["loss"])
    step_s = float(np.median(times))

    fpt = flops.flops_per_token(m, seq_len)
    kind = jax.devices()[0].device_kind
    peak = flops.device_peak_flops(kind, m.compute_dtype, jax.device_count())
    tps = batch * seq_len / step_s
    out: dict[str, Any] = {
        "model": m.name, "mesh": sharding.describe(mesh), "batch": batch, "seq_len": seq_len,
        "microbatches": microbatches, "streams": streams, "compute_dtype": m.compute_dtype, "param_dtype": m.param_dtype,
        "attention_requested": m.attention_impl, "attention_impl": attention, "remat": m.remat,
        "scan_layers": m.scan_layers, "params": flops.param_counts(m)["params"],
        "n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head, "d_head": d_head(m),
        "device": kind, "platform": jax.devices()[0].platform, "n_devices": jax.device_count(),
        "init_s": init_s, "compile_s": compile_s, "compile_cached_s": cached_s, "step_s": step_s, "step_s_min": float(min(times)),
        "steps_timed": steps, "tokens_per_s": tps, "loss": loss, "peak_flops": peak,
    }  # fmt: skip
    for conv, key in (("model", "flops_per_token"), ("6n", "flops_per_token_6n")):
        achieved = tps * fpt[key]
        out[f"flops_per_token_{conv}"] = fpt[key]
        out[f"tflops_{conv}"] = achieved / 1e12
        out[f"mfu_{conv}"] = flops.mfu(tps, fpt[key], peak)
    if loader:
        out.update(loader_throughput(batch, seq_len))
    return out


def cached_compile_time(step: Any, *args: Any) -> float:
    """Seconds to trace, lower and compile `step` again from JAX's persistent compilation cache (a re-run of
    the same job): the entry is written to a fresh folder, every in-memory cache cleared, the compile timed.
    Raises if the second compile did not hit the cache, so a miss is never reported as a cached time."""
    import tempfile

    import jax
    from jax.experimental.compilation_cache import compilation_cache

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
        from research import data as data_lib
        from research.config import DataConfig

        cfg = DataConfig(
            name="bench-fixture", sources=[str(ROOT / "tests" / "fixtures" / "corpus")], vocab_size=384,
            cache_dir=str(ROOT / ".cache" / "bench-data"), val_fraction=0.2,
        )  # fmt: skip
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


# ---------------------------------------------------------------------------------------------
# Output


def _fmt_flops(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def report(r: dict[str, Any]) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    peak = "unknown" if r["peak_flops"] is None else f"{r['peak_flops'] / 1e12:.3g} TFLOP/s"
    lines = [
        f"== {r['model']} ({r['params']:,} params, L{r['n_layer']} d{r['d_model']} h{r['n_head']}x{r['d_head']}) "
        f"batch {r['batch']} x seq {r['seq_len']} = {r['batch'] * r['seq_len']:,} tokens/step"
        + (f", {r['microbatches']} microbatches" if r["microbatches"] > 1 else "")
        + (f", {r['streams']} streams" if r.get("streams", 1) > 1 else ""),
        f"   device      {r['device']} x {r['n_devices']} ({r['platform']}), mesh {r['mesh']}",
        f"   precision   params {r['param_dtype']}, compute {r['compute_dtype']}; attention {r['attention_impl']}"
        + (f" (asked for {r['attention_requested']})" if r["attention_requested"] != r["attention_impl"] else "")
        + f"; remat {r['remat']}, scan_layers {r['scan_layers']}",
        f"   compile     {r['compile_s']:.2f} s   (init {r['init_s']:.2f} s)"
        + ("" if r.get("compile_cached_s") is None else f"; from the persistent cache {r['compile_cached_s']:.2f} s"),
        f"   step        {1000 * r['step_s']:.2f} ms median of {r['steps_timed']} (min {1000 * r['step_s_min']:.2f} ms)",
        f"   tokens/s    {r['tokens_per_s']:,.0f}",
        f"   TFLOP/s     {r['tflops_model']:.4g} (model: 6N_all + attention, {_fmt_flops(r['flops_per_token_model'])}"
        f" FLOP/token)   {r['tflops_6n']:.4g} (6N non-embedding, {_fmt_flops(r['flops_per_token_6n'])} FLOP/token)",
        f"   MFU         {pct(r['mfu_model'])} (model)   {pct(r['mfu_6n'])} (6N)   of peak {peak}"
        + (" [CPU peak is an estimate]" if r["platform"] == "cpu" else ""),
    ]
    ref = PYTORCH_CPU_TOKENS_PER_S.get(r["model"]) if r["platform"] == "cpu" and r["batch"] == 16 else None
    if ref and r["seq_len"] == 256:
        lines.append(
            f"   vs PyTorch  {r['tokens_per_s'] / ref:.2f}x the issue's PyTorch reference ({ref:,} tokens/s, float32, "
            f"tcmalloc); best step {r['batch'] * r['seq_len'] / r['step_s_min'] / ref:.2f}x"
        )
    live = r.get("pytorch_now")
    if live and "tokens_per_s" in live:
        lines.append(
            f"   vs PyTorch  {r['tokens_per_s'] / live['tokens_per_s']:.2f}x PyTorch measured right after "
            f"({live['tokens_per_s']:,.0f} tokens/s, float32, {live['allocator']}; best step {live['best_tokens_per_s']:,.0f})"
        )
    elif live:
        lines.append(f"   vs PyTorch  not measured now ({live['error'][0]})")
    if r.get("loader_tokens_per_s"):
        lines.append(
            f"   loader      {r['loader_tokens_per_s']:,.0f} tokens/s from research.data's train loader "
            f"= {r['loader_tokens_per_s'] / r['tokens_per_s']:.1f}x what the step consumes"
        )
    elif "loader_error" in r:
        lines.append(f"   loader      not measured ({r['loader_error']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset",
        choices=["auto", "cpu", "gpu"],
        default=None,
        help="a fixed set of cases (default when --model is not given: auto = gpu if there is one, else cpu)",
    )
    p.add_argument("--model", help="conf/model/NAME.yaml (a single case)")
    p.add_argument(
        "--mesh", default="single", help="conf/mesh/NAME.yaml (default single); sizes via --set mesh.fsdp=.."
    )
    p.add_argument("--batch", type=int, default=16, help="global batch in sequences")
    p.add_argument("--seq-len", type=int, default=None, help="window (default: the model's context)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument(
        "--streams", type=int, default=None, help="sub-batches per step (default: automatic, as train.streams=null)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="GROUP.FIELD=VALUE",
        help="override a model or mesh field, e.g. model.compute_dtype=bfloat16, mesh.tensor=2 (repeatable)",
    )
    p.add_argument("--no-loader", action="store_true", help="skip the data-loader measurement")
    p.add_argument(
        "--no-torch", action="store_true", help="skip running the PyTorch reference next to the nanogpt_bench cases"
    )
    p.add_argument(
        "--cached-compile",
        action="store_true",
        help="also time a re-compile from JAX's persistent cache (a re-run of the job); on in the gpu preset",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument(
        "--compile-cache",
        action="store_true",
        help="allow JAX's persistent compilation cache (off by default: compile times are real compiles)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import jax

    from research import distributed, flops

    if not args.compile_cache:  # `make` exports JAX_COMPILATION_CACHE_DIR; a cache hit is not a compile time
        jax.config.update("jax_enable_compilation_cache", False)
    distributed.maybe_initialize()
    if args.model:
        cases = [dict(model=args.model, batch=args.batch, seq_len=args.seq_len, steps=args.steps,
                      warmup=args.warmup, sets=[], mesh=args.mesh, microbatches=args.microbatches)]  # fmt: skip
    else:
        preset = args.preset or "auto"
        if preset == "auto":
            preset = "gpu" if jax.default_backend() == "gpu" else "cpu"
        cases = [dict(c, mesh=args.mesh, microbatches=args.microbatches) for c in PRESETS[preset]]
    print(f"bench: jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}), {len(cases)} case(s)", flush=True)  # fmt: skip
    if jax.default_backend() == "cpu":
        print(f"bench: {flops.cpu_cores()} CPU cores; native bf16 dot products: "
              f"{'yes' if cpu_has_native_bf16() else 'no (bf16 cases run slower than float32 here)'}; "
              f"runtime: {os.environ.get('LD_PRELOAD') or 'no preload'}", flush=True)  # fmt: skip
    results = []
    for c in cases:
        seq_len = c["seq_len"]
        if seq_len is None:
            seq_len = load_group("model", c["model"], c.get("sets", []) + args.sets).seq_len
        r = bench_case(
            c["model"], c["mesh"], c["batch"], seq_len, c["steps"], c["warmup"], c.get("sets", []) + args.sets,
            microbatches=c["microbatches"], loader=not args.no_loader, streams=args.streams,
            cached_compile=args.cached_compile or c.get("cached_compile", False),
        )  # fmt: skip
        if jax.default_backend() == "cpu" and c["batch"] == 16 and seq_len == 256 and not args.no_torch:
            r["pytorch_now"] = pytorch_now(c["model"], steps=10 if c["model"].endswith("_s") else 5)
        results.append(r)
        if jax.process_index() == 0:
            print(report(r), flush=True)
    if args.json and jax.process_index() == 0:
        args.json.write_text(json.dumps(results, indent=1, default=lambda x: None if x is None else str(x)) + "\n")
    return 0 if all(math.isfinite(r["loss"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
