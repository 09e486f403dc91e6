"""The GPU program lowered on a CPU machine, run as a subprocess by tests/integration/test_cuda_lowering.py.

    python tests/lowering_worker.py OUT_DIR

The real train programs (research/train/programs.py: init, train step, eval step) of a tiny GPT-2-shaped
model in bf16, built for platform "cuda" and lowered with lowering_platforms=("cuda",) on 8 fake CPU devices
(the flag must be set before JAX is imported, hence a process of its own): one device and fsdp 4 x tensor 2,
each with attention_impl xla and cudnn. Writes OUT_DIR/<case>/{init,step,eval}.mlir and OUT_DIR/cases.json
(the kernels chosen, and where the cuDNN version came from).

JAX lowers cuDNN attention only when it detects a cuDNN library (jax._src.lib.cuda_versions, from a
jax-cuda1x-plugin wheel with libcudnn beside it; no GPU needed). Where none is detected, the version check
alone is stubbed with cuDNN 9.12 (what the cuda13 plugin is built against), so the lowering emits the same
custom calls; LOWERING_CUDA_SITE (a folder made by scripts/cuda_lowering_site.sh) puts a real one first.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
if os.environ.get("LOWERING_CUDA_SITE"):
    sys.path.insert(0, os.environ["LOWERING_CUDA_SITE"])

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from research.config.schema import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from research.train import programs  # noqa: E402

STUB_CUDNN_VERSION = 91200
MODEL = ModelConfig(
    name="gpt2_tiny",
    n_layer=2,
    d_model=128,
    n_head=4,
    vocab_size=384,
    seq_len=128,
    vocab_pad_multiple=128,
    compute_dtype="bfloat16",
)
MESHES = {"single": MeshConfig(name="single"), "fsdp4_tensor2": MeshConfig(name="fsdp_tp", fsdp=4, tensor=2)}


def cudnn_source() -> str:
    """Where JAX's cuDNN version comes from here: a real library, or the stub installed now."""
    from jax._src.cudnn import fused_attention_stablehlo as fa
    from jax._src.lib import cuda_versions

    if cuda_versions is not None:
        try:
            return f"cuDNN {cuda_versions.cudnn_get_version()} from {Path(cuda_versions.__file__).parent.name}"
        except Exception as e:  # noqa: BLE001 - a plugin without its libcudnn
            reason = f"the plugin found no libcudnn ({e})"
    else:
        reason = "no jax-cuda plugin is installed"
    if not hasattr(fa, "check_cudnn_version"):
        return f"unavailable: {reason}, and this JAX has no check_cudnn_version to stub"
    fa.check_cudnn_version = lambda: STUB_CUDNN_VERSION
    return f"stub: {reason}; JAX's cuDNN version check answers {STUB_CUDNN_VERSION}"


def lower_case(name: str, mesh_cfg: MeshConfig, attention: str, out: Path) -> dict:
    model = ModelConfig(**{**MODEL.__dict__, "attention_impl": attention})
    cfg = Config(
        model=model,
        data=DataConfig(),
        optim=OptimConfig(),
        train=TrainConfig(batch_size=8, steps=10, streams=None),
        mesh=mesh_cfg,
    )
    n = 1 if mesh_cfg.name == "single" else 8
    p = programs.build(cfg, devices=jax.devices()[:n], platform="cuda")
    (out / name).mkdir(parents=True, exist_ok=True)
    for part, lowered in zip(("init", "step", "eval"), p.lower(("cuda",)), strict=True):
        (out / name / f"{part}.mlir").write_text(lowered.as_text())
    return {"devices": n, "mesh": dict(p.mesh.shape), "streams": p.streams, **p.record()}


def main(out: Path) -> None:
    source = cudnn_source()
    cases = {}
    for mesh_name, mesh_cfg in MESHES.items():
        for attention in ("xla", "cudnn"):
            cases[f"{mesh_name}_{attention}"] = lower_case(f"{mesh_name}_{attention}", mesh_cfg, attention, out)
    (out / "cases.json").write_text(json.dumps({"cudnn_source": source, "cases": cases}, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
