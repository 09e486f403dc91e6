"""The planner (research/planner.py, flops.memory_estimate, experiments/plan.py) against hand-computed figures."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, compose

from research.config.hydra import to_config
from research.config.schema import ModelConfig
from research.errors import ConfigError
from research.memory import memory_estimate, param_shapes
from research.planner import make_plan, render_text


def plan_of(*overrides: str) -> dict:
    return make_plan(to_config(compose(list(overrides))))


def gpt_params(L: int, D: int, V: int, T: int) -> int:
    """GPT-2/3 with tied embeddings and d_ff = 4D: per layer 12 D^2 + 13 D (qkv, out, MLP, 2 LayerNorms),
    plus token and position tables and the final LayerNorm."""
    return L * (12 * D * D + 13 * D) + V * D + T * D + 2 * D


def test_gpt2_small_hand_computed():
    p = plan_of("model=gpt2_small", "train.batch_size=16")
    N = gpt_params(12, 768, 50257, 1024)
    assert p["params"] == N == 124_439_808
    assert p["params_embed"] == 50257 * 768 + 1024 * 768
    assert p["flops_per_token_6n"] == 6 * (N - p["params_embed"])
    assert p["flops_per_token"] == 6 * (N - 1024 * 768) + 12 * 12 * 12 * 64 * 1024 == 855_166_464
    # the rule of thumb: bf16 weights = 2 bytes x params; then the float32 training budget on one device
    assert p["bf16_weights_bytes"] == 2 * N
    assert p["mem_weights_bytes"] == p["mem_grads_bytes"] == 4 * N
    assert p["mem_optimizer_bytes"] == 8 * N and p["mem_compute_weights_bytes"] == 0
    # activations, float32, no remat, XLA attention, B=16, T=1024, per layer and token: residual x2 (4D each),
    # LayerNorm outputs x2, q/k/v, attention output, MLP hidden x2; per layer 8 bytes x B x heads x T^2 of
    # softmax + probabilities; then the final residual, ln_f output and logits + their gradient.
    tokens = 16 * 1024
    per_token_layer = 4 * (2 * 768 + 2 * 768 + 3 * 768 + 768 + 2 * 3072)
    per_layer = per_token_layer * tokens + 8 * 16 * 12 * 1024**2
    outside = tokens * (4 * 768 + 4 * 768 + 2 * 4 * 50257)
    assert p["mem_activations_bytes"] == 12 * per_layer + outside == 35_678_978_048
    assert p["mem_total_bytes"] == 16 * N + p["mem_activations_bytes"]
    by = p["mem_total_bytes_by_remat"]
    assert by["full"] < by["dots_saveable"] < by["none"] == p["mem_total_bytes"]


def test_gpt2_small_fsdp_bf16_shards():
    p = plan_of(
        "model=gpt2_small", "mesh=fsdp", "plan.devices=8", "model.compute_dtype=bfloat16", "train.batch_size=16"
    )
    N = 124_439_808
    # replicated: the parameters without an 'embed' axis (qkv bias, MLP in-bias, LayerNorms, ln_f)
    replicated = 12 * (3 * 768 + 3072 + 4 * 768) + 2 * 768
    local = (N - replicated) // 8 + replicated
    assert p["devices"] == 8 and p["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert p["params_per_device"] == local == 15_645_024
    assert p["mem_weights_bytes"] == 4 * local and p["mem_optimizer_bytes"] == 8 * local
    layer = 12 * 768 * 768 + 13 * 768
    assert p["mem_compute_gathered_layer_bytes"] == 2 * layer  # one bf16 layer gathered over FSDP
    assert p["mem_compute_weights_bytes"] == 2 * local + 2 * layer
    assert p["batch_shards"] == 8 and p["batch_per_device"] == 2
    one = plan_of("model=gpt2_small", "model.compute_dtype=bfloat16", "train.batch_size=2")
    # activations shard by the batch: 8 devices x 2 sequences = one device with 2
    assert p["mem_activations_bytes"] == one["mem_activations_bytes"]


def test_gpt3_175b_hand_computed_and_fits():
    p = plan_of(
        "model=gpt3_175b",
        "mesh=fsdp",
        "plan.devices=1024",
        "train=gpu",
        "train.batch_size=1024",
        "model.compute_dtype=bfloat16",
        "model.remat=full",
        "plan.device=H100",
        "plan.mfu=0.5",
    )
    N = gpt_params(96, 12288, 50257, 2048)
    assert p["params"] == N == 174_604_259_328
    assert p["flops_per_token"] == 6 * (N - 2048 * 12288) + 12 * 96 * 96 * 128 * 2048
    assert p["bf16_weights_bytes"] == 2 * N == 349_208_518_656  # "175B needs ~350 GB just for bf16 weights"
    assert p["chinchilla_tokens"] == 20 * N
    assert p["tokens"] == p["steps"] * 1024 * 2048 and p["steps"] == math.ceil(
        20 * p["params_nonembed"] / (1024 * 2048)
    )
    assert p["flops"] == 6 * p["params_nonembed"] * p["tokens"]
    assert p["device_memory_bytes"] == 80e9 and p["device_peak_flops"] == 989e12
    assert p["wall_seconds"] == pytest.approx(p["flops_model"] / (1024 * 989e12 * 0.5))
    assert p["fits"] is True and p["fits_by_remat"]["none"] is False
    assert p["mem_total_bytes"] <= 0.75 * 80e9
    text = render_text(p)
    assert "349.21 GB" in text and "rule of thumb" in text and "fits" in text


def test_chinchilla_fit_closed_form(tmp_path):
    fit = {
        "law": "chinchilla",
        "params": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
        "columns": {"N": "params_nonembed"},
    }
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    p = plan_of("model=gpt2_small", "train.tokens=1000000000", f"plan.fit={path}")
    C = 6 * p["params_nonembed"] * p["tokens"]
    G = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
    assert p["fit_compute"] == C
    assert p["fit_N_opt"] == pytest.approx(G * (C / 6) ** (0.28 / 0.62), rel=1e-12)
    assert p["fit_N_opt"] * p["fit_D_opt"] == pytest.approx(C / 6, rel=1e-12)
    assert p["fit_n_column"] == "params_nonembed"
    path.write_text(json.dumps({"law": "kaplan_n", "params": {"Nc": 1.0, "alpha": 0.07}}))
    with pytest.raises(ConfigError, match="plan.fit=.*--law chinchilla"):
        plan_of("model=gpt2_small", f"plan.fit={path}")


def test_plan_errors_are_one_sentence():
    with pytest.raises(ConfigError, match="plan.device='TPU v9'"):
        plan_of("model=gpt2_small", "plan.device=TPU v9")
    with pytest.raises(ConfigError, match="plan.mfu"):
        plan_of("model=gpt2_small", "plan.mfu=1.5")
    with pytest.raises(ConfigError, match="plan.devices=6"):
        plan_of("model=gpt2_small", "mesh=fsdp_tp", "plan.devices=6", "mesh.tensor=4")
    p = plan_of("model=gpt2_small", "plan.device=null")
    assert p["fits"] is None and p["wall_seconds"] is None
    assert plan_of("model=gpt2_small", "plan.device=A100-40GB")["device_memory_bytes"] == 40e9


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"scan_layers": True},
        {"attention": "alternating", "scan_layers": True, "n_layer": 4},
        {"tied_embeddings": False, "vocab_pad_multiple": 8, "final_norm": False, "norm": "post"},
    ],
)
def test_param_shapes_match_the_model(overrides):
    from flax import nnx

    from research.model.gpt import abstract_model

    base = dict(name="t", n_layer=2, d_model=32, n_head=4, vocab_size=61, seq_len=16)
    cfg = ModelConfig(**{**base, **overrides})
    state = nnx.state(abstract_model(cfg), nnx.Param)
    model = {
        ".".join(str(getattr(k, "key", k)) for k in path): (tuple(v.shape), tuple(v.get_metadata()["out_sharding"]))
        for path, v in nnx.to_flat_state(state)
    }
    ours = {path: (shape, names) for path, shape, names in param_shapes(cfg)}
    assert ours == model


def test_memory_scales_with_batch_and_remat():
    m = ModelConfig(name="t", n_layer=4, d_model=64, n_head=4, vocab_size=128, seq_len=32)
    one, two = memory_estimate(m, batch_size=1), memory_estimate(m, batch_size=2)
    assert two["activations_bytes"] == 2 * one["activations_bytes"]
    assert two["weights_bytes"] == one["weights_bytes"]
    acc = memory_estimate(m, batch_size=4, microbatches=2)
    assert acc["activations_bytes"] == two["activations_bytes"] and acc["grads_bytes"] == 2 * two["grads_bytes"]
    flash = memory_estimate(dataclasses.replace(m, attention_impl="cudnn"), batch_size=1)
    assert flash["activations_bytes"] < one["activations_bytes"]  # no T x T probabilities kept


def test_plan_cli_gpt3_175b_fsdp():
    """The done-when command: a readable budget (one device by default; plan.devices plans a cluster)."""
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "experiments" / "plan.py"), *a],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = run("model=gpt3_175b", "mesh=fsdp")
    assert text.returncode == 0, text.stderr
    for piece in (
        "174,604,259,328",
        "rule of thumb",
        "349.21 GB",
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "does NOT fit",
        "fits from",
        "time:",
    ):
        assert piece in text.stdout, piece
    js = run("model=gpt3_175b", "mesh=fsdp", "plan.devices=1024", "output=json")
    assert js.returncode == 0, js.stderr
    p = json.loads(js.stdout)
    assert p["devices"] == 1024 and p["mesh"]["fsdp"] == 1024 and p["bf16_weights_bytes"] == 2 * p["params"]
