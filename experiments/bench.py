"""Time the jitted train step: compile time, step time, tokens/s, TFLOP/s and MFU (both conventions).

    python experiments/bench.py                          # preset by device: gpu -> gpt2_small + medium, else the CPU set
    python experiments/bench.py --preset cpu             # nano_xl 16x128, nanogpt_bench_s/m 16x256 (float32)
    python experiments/bench.py --preset gpu             # gpt2_small, gpt2_medium 32x1024, bf16, cuDNN attention
    python experiments/bench.py --model nano_m --mesh fsdp --batch 32 --seq-len 128 --steps 10 \\
        --set model.compute_dtype=bfloat16 --set model.remat=full --json bench.json
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench.py --model nano_s --mesh fsdp_tp

One case = one model config (conf/model/NAME.yaml), mesh (conf/mesh/NAME.yaml), global batch and
window. The step is the training loop's own (research/train/programs.py builds it: parameters and AdamW
state born sharded, explicit in/out shardings, donated state); batches are synthetic tokens already on
the devices, so the figure is the step alone (research/bench/case.py). The data loader's throughput
over prepared data (the test fixture corpus, always present) is printed next to what the step consumes.

The config is composed from conf/ by Hydra like every other entry point (--model/--mesh/--set become
overrides), so on a bare accelerator image Hydra comes from wheels: see `make bench-wheels` and
experiments/bench_device.sh for the one-command GPU run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from research import flops  # noqa: E402
from research.bench.case import bench_case  # noqa: E402
from research.bench.report import PYTORCH_CPU_TOKENS_PER_S, cpu_has_native_bf16, pytorch_now, report  # noqa: E402
from research.config.hydra import compose, to_config  # noqa: E402
from research.config.schema import MeshConfig, ModelConfig  # noqa: E402
from research.config.validate import validate  # noqa: E402
from research.errors import UserError  # noqa: E402
from research.parallel import distributed  # noqa: E402

__all__ = ["PYTORCH_CPU_TOKENS_PER_S", "main", "pytorch_now", "report"]

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
    # One GPU: GPT-2 small (and medium) at the full context, bf16 matmuls, cuDNN flash attention, vocab padded to 128.
    "gpu": [
        dict(model="gpt2_small", batch=32, seq_len=1024, steps=20, warmup=3,
             sets=["model.compute_dtype=bfloat16", "model.attention_impl=cudnn", "model.vocab_pad_multiple=128"],
             cached_compile=True),
        dict(model="gpt2_medium", batch=32, seq_len=1024, steps=10, warmup=2,
             sets=["model.compute_dtype=bfloat16", "model.attention_impl=cudnn", "model.vocab_pad_multiple=128"]),
    ],
}  # fmt: skip


def _check_names(model: str, mesh: str, sets: list[str]) -> None:
    """The bench's own flags, named in its own terms before Hydra sees them."""
    for group, name in (("model", model), ("mesh", mesh)):
        options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
        if name not in options:
            raise SystemExit(f"error: no {group} config {name!r}; choose one of {', '.join(options)}.")
    schemas = {"model": ModelConfig, "mesh": MeshConfig}
    for item in sets:
        group, _, field = item.partition("=")[0].lstrip("+").partition(".")
        known = {f.name for f in fields(schemas[group])} if group in schemas else None
        if known is not None and field.split(".")[0] not in known:
            raise SystemExit(f"error: --set {item}: {group} has no field {field!r}.")


def case_config(case: dict[str, Any], sets: list[str]) -> Any:
    """The case as a run's config, composed from conf/ like every entry point's (train=cpu defaults)."""
    _check_names(case["model"], case["mesh"], sets)
    total = case["warmup"] + case["steps"] + 1
    overrides = [
        f"model={case['model']}",
        f"mesh={case['mesh']}",
        f"train.batch_size={case['batch']}",
        f"train.microbatches={case['microbatches']}",
        "train.tokens=null",
        f"train.steps={total}",
        f"train.streams={case.get('streams') or 'null'}",
        "optim.warmup_steps=1",
        *sets,
    ]
    if case["seq_len"] is not None:
        overrides.append(f"train.seq_len={case['seq_len']}")
    cfg = to_config(compose(overrides))
    if cfg.train.seq_len is not None and cfg.train.seq_len > cfg.model.seq_len:
        raise SystemExit(
            f"error: --seq-len {cfg.train.seq_len} is above {cfg.model.name}'s context {cfg.model.seq_len}."
        )
    try:
        validate(cfg, n_devices=jax.device_count())
    except UserError as e:
        raise SystemExit(f"error: {e}") from e
    return cfg


def parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--microbatches",
        type=lambda v: v if v == "auto" else int(v),
        default=1,
        help="gradient accumulation: a count, or auto (the fewest that fit the device's memory)",
    )
    p.add_argument(
        "--streams", type=int, default=None, help="sub-batches per step (default: automatic, as train.streams=null)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="GROUP.FIELD=VALUE",
        help="a config override, e.g. model.compute_dtype=bfloat16, mesh.tensor=2 (repeatable)",
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.compile_cache:  # `make` exports JAX_COMPILATION_CACHE_DIR; a cache hit is not a compile time
        jax.config.update("jax_enable_compilation_cache", False)
    distributed.maybe_initialize()
    common = dict(mesh=args.mesh, microbatches=args.microbatches, streams=args.streams)
    if args.model:
        cases = [
            dict(
                model=args.model,
                batch=args.batch,
                seq_len=args.seq_len,
                steps=args.steps,
                warmup=args.warmup,
                sets=[],
                **common,
            )
        ]
    else:
        preset = args.preset or "auto"
        if preset == "auto":
            preset = "gpu" if jax.default_backend() == "gpu" else "cpu"
        cases = [dict(c, **common) for c in PRESETS[preset]]
    print(
        f"bench: jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}), {len(cases)} case(s)",
        flush=True,
    )
    if jax.default_backend() == "cpu":
        print(
            f"bench: {flops.cpu_cores()} CPU cores; native bf16 dot products: "
            f"{'yes' if cpu_has_native_bf16() else 'no (bf16 cases run slower than float32 here)'}; "
            f"runtime: {os.environ.get('LD_PRELOAD') or 'no preload'}",
            flush=True,
        )
    results = []
    for c in cases:
        cfg = case_config(c, c.get("sets", []) + args.sets)
        r = bench_case(
            cfg,
            steps=c["steps"],
            warmup=c["warmup"],
            loader=not args.no_loader,
            cached_compile=args.cached_compile or c.get("cached_compile", False),
        )
        if jax.default_backend() == "cpu" and c["batch"] == 16 and r["seq_len"] == 256 and not args.no_torch:
            r["pytorch_now"] = pytorch_now(c["model"], steps=10 if c["model"].endswith("_s") else 5)
        results.append(r)
        if jax.process_index() == 0:
            print(report(r), flush=True)
    if args.json and jax.process_index() == 0:
        args.json.write_text(json.dumps(results, indent=1, default=lambda x: None if x is None else str(x)) + "\n")
    return 0 if all(math.isfinite(r["loss"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
