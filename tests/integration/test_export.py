"""Hugging Face export (research/export.py, experiments/export.py): layout, round trip, logit parity."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from flax import nnx
from models import TOKENS, params_of, randomized, tiny
from tiny_run import tiny_run

from research.errors import ExportError
from research.inference.export import export_model, hf_config

HAVE_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
needs_hf = pytest.mark.skipif(
    not HAVE_HF, reason="transformers and torch are not installed (pip install -e '.[dev]' brings them)"
)

GPT2 = {}
GPT2_UNTIED = {"tied_embeddings": False, "vocab_pad_multiple": 8, "activation": "relu"}
GPT1 = {"norm": "post", "final_norm": False, "scaled_residual_init": False}


def expected_layout(cfg, arch: str) -> dict[str, tuple[int, ...]]:
    """Hugging Face parameter names and shapes, written out from the transformers model definitions."""
    D, L, V, T, F = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.seq_len, 4 * cfg.d_model
    emb = ("wte", "wpe") if arch == "gpt2" else ("tokens_embed", "positions_embed")
    out = {f"transformer.{emb[0]}.weight": (V, D), f"transformer.{emb[1]}.weight": (T, D)}
    for i in range(L):
        h = f"transformer.h.{i}"
        out.update(
            {
                f"{h}.ln_1.weight": (D,),
                f"{h}.ln_1.bias": (D,),
                f"{h}.attn.c_attn.weight": (D, 3 * D),
                f"{h}.attn.c_attn.bias": (3 * D,),
                f"{h}.attn.c_proj.weight": (D, D),
                f"{h}.attn.c_proj.bias": (D,),
                f"{h}.ln_2.weight": (D,),
                f"{h}.ln_2.bias": (D,),
                f"{h}.mlp.c_fc.weight": (D, F),
                f"{h}.mlp.c_fc.bias": (F,),
                f"{h}.mlp.c_proj.weight": (F, D),
                f"{h}.mlp.c_proj.bias": (D,),
            }
        )
    if arch == "gpt2":
        out.update({"transformer.ln_f.weight": (D,), "transformer.ln_f.bias": (D,)})
    if not cfg.tied_embeddings:
        out["lm_head.weight"] = (V, D)
    return out


@pytest.mark.parametrize(("overrides", "arch"), [(GPT2, "gpt2"), (GPT2_UNTIED, "gpt2"), (GPT1, "openai-gpt")])
def test_export_round_trip(tmp_path, overrides, arch):
    from safetensors.numpy import load_file

    cfg = tiny(**overrides)
    model = randomized(cfg)
    export_model(cfg, nnx.state(model, nnx.Param), tmp_path, eos_id=2)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == arch and config["n_embd"] == 32 and config["n_layer"] == 2
    assert config["vocab_size"] == 61 and config["n_positions"] == 16 and config["n_head"] == 4
    assert config["tie_word_embeddings"] == cfg.tied_embeddings and config["eos_token_id"] == 2
    if arch == "gpt2":
        assert config["activation_function"] == ("relu" if cfg.activation == "relu" else "gelu_new")
        assert config["n_inner"] == 128
    else:
        assert config["afn"] == "gelu"  # transformers' openai-gpt maps "gelu" to the tanh approximation

    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == expected_layout(cfg, arch)
    assert all(v.dtype == np.float32 for v in tensors.values())
    p = params_of(model)
    emb = "wte" if arch == "gpt2" else "tokens_embed"
    np.testing.assert_array_equal(tensors[f"transformer.{emb}.weight"], np.asarray(p["wte"])[:61])
    for i in range(2):
        b, h = p["blocks"][i], f"transformer.h.{i}"
        qkv = np.asarray(b["attn"]["qkv_kernel"])  # [D, 3, N, H]: c_attn columns are q | k | v, heads contiguous
        c_attn = tensors[f"{h}.attn.c_attn.weight"]
        for c in range(3):
            for n in range(4):
                np.testing.assert_array_equal(c_attn[:, c * 32 + n * 8 : c * 32 + (n + 1) * 8], qkv[:, c, n])
        np.testing.assert_array_equal(tensors[f"{h}.attn.c_proj.weight"][8:16], np.asarray(b["attn"]["out_kernel"])[1])
        np.testing.assert_array_equal(tensors[f"{h}.mlp.c_fc.weight"], np.asarray(b["mlp"]["in_kernel"]))
        np.testing.assert_array_equal(tensors[f"{h}.ln_2.bias"], np.asarray(b["ln2"]["bias"]))
    if not cfg.tied_embeddings:
        np.testing.assert_array_equal(tensors["lm_head.weight"], np.asarray(p["head"])[:, :61].T)


def test_scanned_layout_exports_the_same(tmp_path):
    """scan_layers stacks the blocks along a leading axis; the export unstacks them into h.{i}."""
    import jax
    from safetensors.numpy import load_file

    from research.model.gpt import abstract_model

    plain = params_of(randomized(tiny()))
    stacked = {k: v for k, v in plain.items() if k != "blocks"}
    stacked["layers"] = {"blocks": {0: jax.tree.map(lambda *xs: np.stack(xs), plain["blocks"][0], plain["blocks"][1])}}
    state = nnx.state(abstract_model(tiny(scan_layers=True)), nnx.Param)
    nnx.replace_by_pure_dict(state, stacked)
    export_model(tiny(), plain, tmp_path / "plain")
    export_model(tiny(scan_layers=True), state, tmp_path / "scanned")
    a, b = load_file(str(tmp_path / "plain/model.safetensors")), load_file(str(tmp_path / "scanned/model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_refusals_are_one_sentence():
    with pytest.raises(ExportError, match=r"model.attention=alternating .*no Hugging Face equivalent"):
        hf_config(tiny(attention="alternating"))
    with pytest.raises(ExportError, match="d_head"):
        hf_config(tiny(d_head=16))
    with pytest.raises(ExportError, match="final_norm"):
        hf_config(tiny(final_norm=False))
    with pytest.raises(ExportError, match="d_ff"):
        hf_config(tiny(**GPT1, d_ff=64))


def hf_logits(out_dir, tokens: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out_dir)).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


@needs_hf
@pytest.mark.parametrize(
    ("overrides", "cls"), [(GPT2, "GPT2LMHeadModel"), (GPT2_UNTIED, "GPT2LMHeadModel"), (GPT1, "OpenAIGPTLMHeadModel")]
)
def test_logit_parity_with_transformers(tmp_path, overrides, cls):
    from transformers import AutoConfig

    cfg = tiny(**overrides)
    model = randomized(cfg, seed=4)
    export_model(cfg, nnx.state(model, nnx.Param), tmp_path)
    assert AutoConfig.from_pretrained(str(tmp_path)).architectures == [cls]
    ours = np.asarray(model(TOKENS))
    theirs = hf_logits(tmp_path, TOKENS)
    assert theirs.shape == ours.shape == (2, 16, 61)
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.slow
def test_export_cli_on_a_trained_run(tmp_path, tmp_path_factory, corpus_dir, capsys):
    from experiments.export import main
    from research.inference.load import load_run

    run_dir = tiny_run(tmp_path_factory, corpus_dir)
    out = tmp_path / "hf"
    assert main([f"run={run_dir}", f"out={out}"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert main([f"run={run_dir}"]) == 2 and "out=" in capsys.readouterr().err
    if HAVE_HF:
        import sentencepiece as spm

        run = load_run(run_dir)
        ids = [[2, *spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).encode("ROMEO: What, ho!")]]
        assert np.abs(np.asarray(run.model(np.asarray(ids))) - hf_logits(out, np.asarray(ids))).max() < 1e-4
