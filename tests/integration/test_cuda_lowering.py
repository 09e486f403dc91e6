"""The GPU program, lowered for CUDA on this CPU machine: the real init, train step and eval step of a tiny
GPT-2 in bf16 (tests/lowering_worker.py), on one device and on 8 fake devices as fsdp 4 x tensor 2.

What this checks: the kernels chosen for "cuda" (XLA or cuDNN attention, no CPU kernels), bf16 matmuls
accumulating in float32, the sharding annotations (the mesh, sharded parameters and batch, the donated
state), and the cuDNN fused-attention custom calls (forward and backward) under attention_impl=cudnn.

What it cannot catch, since nothing is compiled for a GPU here:
  - XLA's GPU compiler: fusion, GEMM autotuning, the cuDNN graph that the fused-attention call becomes
    (a shape or layout cuDNN refuses, or a slow plan, shows only on the device);
  - the SPMD partitioner: the collectives it inserts, and on a sharded mesh the cuDNN call itself, which
    JAX's custom partitioning emits only while partitioning (the lowered module holds the
    CustomSPMDPartitioning call and its sharding rule instead);
  - memory (buffer assignment happens at compile: XLA's figure for the GPU program needs the GPU), speed
    and numerics;
  - cuDNN version and compute-capability gates: without a jax-cuda plugin and libcudnn, JAX's cuDNN version
    check is stubbed (9.12, the cuda13 plugin's build version), and off a GPU JAX's compute-capability
    checks answer False (the Hopper-only head sizes above 128 would be refused here but not on an H100).
    The plugin wheel alone does not let cuDNN lower (`cuDNN not found`); with libcudnn.so.9 and
    libcudnn_graph.so.9 from the nvidia-cudnn-cu13 wheel (517 MB) beside it, it does, with no GPU:
    scripts/cuda_lowering_site.sh makes that folder, and this test uses it when it exists.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

SITE = ROOT / ".cache" / "cuda-lowering-site"
N_LAYER = 2
DENSE = 4 * N_LAYER + 1  # qkv, attention out, MLP in and out per layer, and the tied head
DOT = re.compile(r"stablehlo\.dot_general .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)")


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    out = tmp_path_factory.mktemp("lowering")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if SITE.is_dir() and "LOWERING_CUDA_SITE" not in env:
        env["LOWERING_CUDA_SITE"] = str(SITE)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "lowering_worker.py"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((out / "cases.json").read_text())

    def text(case: str, part: str) -> str:
        return (out / case / f"{part}.mlir").read_text()

    return meta, text


def dots(module: str) -> list[tuple[str, str, str, str]]:
    """(lhs, rhs, result element types, the dot's text) of every dot_general."""
    found = []
    for m in DOT.finditer(module):
        lhs, rhs, res = (t.rsplit("x", 1)[-1].rstrip(">") for t in m.groups())
        found.append((lhs, rhs, res, m.group(0)))
    return found


@pytest.mark.parametrize("case", ["single_xla", "fsdp4_tensor2_xla", "single_cudnn", "fsdp4_tensor2_cudnn"])
def test_bf16_matmuls_accumulate_in_float32(lowered, case):
    meta, text = lowered
    record = meta["cases"][case]
    attention = case.rsplit("_", 1)[1]
    # built for cuda: XLA's or cuDNN's attention, never the CPU's blocked kernel or residual barrier
    assert record["kernels"]["attention"] == attention and record["kernels"]["residual_barrier"] is False
    assert record["streams"] == 1 and record["attention_impl"] == attention
    for part, matmuls in (("step", 3 * DENSE), ("eval", DENSE)):  # backward: two matmuls per forward one
        found = dots(text(case, part))
        to_f32 = [d for d in found if d[:3] == ("bf16", "bf16", "f32")]
        assert len(to_f32) >= matmuls, (part, len(to_f32))
        for lhs, rhs, _, line in found:  # no float32 matmul: a float32 operand only with a bf16 algorithm
            if "f32" in (lhs, rhs):
                assert "lhs_precision_type = bf16, rhs_precision_type = bf16, accumulation_type = f32" in line
        if attention == "cudnn":  # every matmul is a dense layer's; the attention is the fused call
            assert len(found) == len(to_f32) == matmuls, (part, len(found))
    assert not dots(text(case, "init"))


def test_sharding_annotations_on_8_devices(lowered):
    meta, text = lowered
    assert meta["cases"]["fsdp4_tensor2_xla"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    for part in ("init", "step", "eval"):
        module = text("fsdp4_tensor2_xla", part)
        assert "mhlo.num_partitions = 8" in module
        assert 'sdy.mesh @mesh = <["data"=1, "fsdp"=4, "tensor"=2]>' in module, part
    step = text("fsdp4_tensor2_xla", "step")
    head = step.split("func.func public @main(", 1)[1].split("\n", 1)[0]  # the entry's arguments
    assert '[{"data", "fsdp"}, {}]' in head  # the batch over (data, fsdp)
    assert '[{"fsdp"}, {"tensor"}]' in head and '[{"tensor"}, {"fsdp"}]' in head  # (embed, mlp), (vocab, embed)
    assert '[{"fsdp"}, {}, {"tensor"}, {}]' in head  # qkv: (embed, 3, heads, head_dim)
    assert head.count("tf.aliasing_output") >= 30  # the state is donated: parameters and both AdamW moments
    one = text("single_xla", "step")
    assert "mhlo.num_partitions = 1" in one and '"fsdp"=1' in one


def test_cudnn_fused_attention_custom_calls(lowered):
    meta, text = lowered
    source = meta["cudnn_source"]
    if source.startswith("unavailable"):
        pytest.skip(f"cuDNN attention cannot be lowered here: {source}")
    calls = lambda case, part: sorted(set(re.findall(r"custom_call @([\w$]+)", text(case, part))))  # noqa: E731
    assert calls("single_cudnn", "step") == ["__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"], source
    assert calls("single_cudnn", "eval") == ["__cudnn$fmhaSoftmax"]
    assert calls("single_xla", "step") == []
    # sharded, the fused call waits for the partitioner (JAX's custom partitioning); its sharding rule is here
    sharded = text("fsdp4_tensor2_cudnn", "step")
    assert calls("fsdp4_tensor2_cudnn", "step") == ["CustomSPMDPartitioning"]
    assert sharded.count("custom_call @CustomSPMDPartitioning") == 2 * N_LAYER  # forward + backward per layer
    assert "sdy.sharding_rule" in sharded
