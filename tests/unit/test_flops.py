"""Parameter counts and FLOPs per token (research/flops.py) against the papers, the model and plan.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from models import ALL_MODELS, ROOT, model_config

from research.config.schema import ModelConfig
from research.flops import device_peak_flops, flops_per_token, mfu, param_counts

EXACT = {  # GPT-1 paper / Hugging Face checkpoints
    "gpt1": 116_534_784,
    "gpt2_small": 124_439_808,
    "gpt2_medium": 354_823_168,
    "gpt2_large": 774_030_080,
    "gpt2_xl": 1_557_611_200,
}
GPT3_TABLE = {  # GPT-3 Table 2.1: params, n_layer, d_model, n_head, d_head, batch tokens, lr
    "gpt3_125m": (125e6, 12, 768, 12, 64, 524288, 6.0e-4),
    "gpt3_350m": (350e6, 24, 1024, 16, 64, 524288, 3.0e-4),
    "gpt3_760m": (760e6, 24, 1536, 16, 96, 524288, 2.5e-4),
    "gpt3_1p3b": (1.3e9, 24, 2048, 16, 128, 1048576, 2.0e-4),  # erratum: 16 heads of 128
    "gpt3_2p7b": (2.7e9, 32, 2560, 32, 80, 1048576, 1.6e-4),
    "gpt3_6p7b": (6.7e9, 32, 4096, 32, 128, 2097152, 1.2e-4),
    "gpt3_13b": (13e9, 40, 5120, 40, 128, 2097152, 1.0e-4),  # erratum: d_model 5120
    "gpt3_175b": (175e9, 96, 12288, 96, 128, 3200000, 0.6e-4),
}
NANO = ["nano_xs", "nano_s", "nano_m", "nano_l", "nano_xl", "nano_xxl"]


def test_every_named_config_exists():
    for name in [*EXACT, *GPT3_TABLE, *NANO, "nanogpt_bench_s", "nanogpt_bench_m"]:
        assert name in ALL_MODELS, name


@pytest.mark.parametrize("name", list(EXACT))
def test_gpt1_gpt2_exact_counts(name):
    assert param_counts(model_config(name))["params"] == EXACT[name]


@pytest.mark.parametrize("name", list(GPT3_TABLE))
def test_gpt3_table(name):
    paper, n_layer, d_model, n_head, d_head, batch, lr = GPT3_TABLE[name]
    m = model_config(name)
    assert (m.n_layer, m.d_model, m.n_head, m.d_head, m.seq_len) == (n_layer, d_model, n_head, d_head, 2048)
    assert (m.paper_params, m.paper_batch_tokens, m.paper_lr) == (int(paper), batch, pytest.approx(lr))
    assert m.attention == "alternating" and m.local_window == 256
    assert abs(param_counts(m)["params"] / paper - 1) < 0.02


def test_nano_ladder_is_ordered_and_spans_10k_to_1m():
    sizes = [param_counts(model_config(n))["params_nonembed"] for n in NANO]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert 5e3 <= sizes[0] <= 2e4 and 1e6 <= sizes[-1] <= 3e6
    ratios = [b / a for a, b in zip(sizes, sizes[1:], strict=False)]
    assert all(1.5 < r < 4 for r in ratios), ratios  # roughly log-spaced
    for n in NANO:
        m = model_config(n)
        assert (m.vocab_size, m.seq_len, m.norm, m.final_norm) == (512, 128, "pre", True)


def test_count_identities():
    m = model_config("gpt2_small")
    c = param_counts(m)
    assert c["params_embed"] == 50257 * 768 + 1024 * 768
    assert c["params_pos"] == 1024 * 768
    assert c["params_nonembed"] == c["params"] - c["params_embed"]
    untied = param_counts(ModelConfig(**{**vars(m), "tied_embeddings": False}))
    assert untied["params"] - c["params"] == 50257 * 768
    assert untied["params_nonembed"] == c["params_nonembed"]
    padded = param_counts(ModelConfig(**{**vars(m), "vocab_pad_multiple": 128}))
    assert padded["params"] == c["params"] and padded["params_allocated"] == c["params"] + (50304 - 50257) * 768


def test_flops_per_token_conventions():
    m = model_config("gpt2_small")
    f = flops_per_token(m, 1024)
    assert f["flops_per_token_6n"] == 6 * 85_056_000
    # nanoGPT's estimate_mfu for GPT-2 124M at T=1024: 6 N (N excludes wpe) + 12 L H Q T
    assert f["flops_per_token"] == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 12 * 64 * 1024 == 855_166_464
    assert flops_per_token(m, 256)["flops_per_token"] < f["flops_per_token"]


def test_device_peaks_and_mfu(monkeypatch):
    assert device_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16", 8) == 8 * 989e12
    assert device_peak_flops("NVIDIA H100 PCIe", "bfloat16", 1) == 756e12
    assert device_peak_flops("NVIDIA H200", "bfloat16", 1) == 989e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16", 2) == 2 * 312e12
    assert device_peak_flops("Tesla V100-SXM2-16GB", "bfloat16", 1) == 125e12
    assert device_peak_flops("NVIDIA L4", "bfloat16", 1) == 121e12
    assert device_peak_flops("TPU v5 lite", "bfloat16", 1) == 197e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "float32", 1) == 156e12  # TF32
    assert device_peak_flops("some future chip", "bfloat16", 1) is None
    monkeypatch.setattr("research.flops.cpu_cores", lambda: 2)
    assert device_peak_flops("cpu", "float32", 8) == 2 * 160e9  # per core, fake devices share cores
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, None) is None


def _plan(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "plan.py"), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_json_and_table():
    out = _plan("model=gpt2_small", "output=json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["params"] == 124_439_808 and s["model"] == "gpt2_small" and s["seq_len"] == 1024
    assert s["params_nonembed"] + s["params_embed"] == s["params"]
    assert s["flops_per_token"] == 855_166_464 and s["flops_per_token_6n"] == 6 * 85_056_000

    table = _plan("model=gpt3_175b")
    assert table.returncode == 0, table.stderr
    assert "params" in table.stdout and "174,604,259,328" in table.stdout
