"""The benchmark's report: the figures of one case as text, next to PyTorch on the same CPU.

PyTorch is measured by scripts/torch_reference.py right after each nanogpt_bench case with this process's
allocator: this machine's speed drifts (docs/performance.md), so the fair ratio is the one taken in the same
minute.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# Issue #8's reference on the 2-core CPU: PyTorch 2.13 eager, float32, non-fused AdamW, 2 threads, tcmalloc,
# batch 16 x 256 (scripts/torch_reference.py measures it live; scripts/perf_cpu.sh side by side).
PYTORCH_CPU_TOKENS_PER_S = {"nanogpt_bench_s": 15_900, "nanogpt_bench_m": 2_100}


def pytorch_now(model: str, steps: int) -> dict[str, Any] | None:
    """scripts/torch_reference.py for a nanogpt_bench shape, run now with this process's allocator (LD_PRELOAD):
    the ratio is fair only within the same minute."""
    shape = {"nanogpt_bench_s": "s", "nanogpt_bench_m": "m"}.get(model)
    if shape is None or importlib.util.find_spec("torch") is None:
        return None
    cmd = [sys.executable, str(ROOT / "scripts" / "torch_reference.py"), shape, "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    m = re.search(r"(tcmalloc|glibc malloc).*?([\d,]+) tokens/s \(best ([\d,]+)\)", out.stdout)
    if out.returncode or not m:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]}
    return {
        "allocator": m.group(1),
        "tokens_per_s": float(m.group(2).replace(",", "")),
        "best_tokens_per_s": float(m.group(3).replace(",", "")),
    }


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: XLA's CPU kernels then run bf16 matmuls faster than float32 ones."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _fmt_flops(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


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
        f"   memory      {_fmt_bytes(r.get('peak_bytes'))} peak on device 0 (allocator), "
        f"{_fmt_bytes(r.get('xla_bytes'))} XLA's figure for the step"
        + (f"; auto: {r['memory_fit']}" if r.get("memory_fit") else ""),
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
