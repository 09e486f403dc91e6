"""Hugging Face export: GPT-2-family runs as GPT2LMHeadModel, GPT-1 runs as OpenAIGPTLMHeadModel.

    export_run("runs/default/nano_s-seed0", "exports/nano_s")    # config.json, model.safetensors, tokenizer.model
    AutoModelForCausalLM.from_pretrained("exports/nano_s")        # no custom code

Layout (float32, Conv1D convention: kernels stored [in, out], as GPT-2's checkpoints):
  GPT-2 (norm=pre, final LayerNorm)   transformer.wte / wpe, transformer.h.{i}.ln_1, attn.c_attn [D, 3D],
                                      attn.c_proj [D, D], ln_2, mlp.c_fc [D, F], mlp.c_proj [F, D], transformer.ln_f
  GPT-1 (norm=post, no final norm)    transformer.tokens_embed / positions_embed, transformer.h.{i}.attn.c_attn,
                                      attn.c_proj, ln_1 (after attention), mlp.c_fc, mlp.c_proj, ln_2 (after the MLP)
The output head is tied to the token embedding (not written) unless the run untied it
(lm_head.weight [V, D], tie_word_embeddings false). Our fused qkv kernel [D, 3, N, H] flattens to
c_attn's [D, 3D] (q | k | v, heads contiguous), exactly the split GPT2Attention makes. The
SentencePiece model is copied beside the weights (tokenizer.model); the Hugging Face tokenizer
classes are not used, so encode with `sentencepiece` and feed the ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from research.config.derived import d_ff, d_head
from research.config.schema import ModelConfig
from research.errors import ExportError
from research.inference.load import load_run, model_config_of, run_config

TOKENIZER_FILE = "tokenizer.model"
WEIGHTS_FILE = "model.safetensors"


def architecture(model: ModelConfig) -> str:
    """'gpt2' or 'openai-gpt'; raises ExportError when no Hugging Face class computes this model."""
    if model.attention != "dense":
        raise ExportError(
            f"model.attention={model.attention} (GPT-3's alternating dense / locally banded layers) has no Hugging Face "
            "equivalent, so this run cannot be exported; only model.attention=dense runs can."
        )
    if model.n_head * d_head(model) != model.d_model:
        raise ExportError(
            f"model.n_head x model.d_head = {model.n_head * d_head(model)} differs from model.d_model={model.d_model}, which "
            "Hugging Face GPT models cannot express; only runs with d_head = d_model / n_head can be exported."
        )
    if model.activation not in ("gelu", "relu"):
        raise ExportError(f"model.activation={model.activation} has no Hugging Face GPT equivalent.")
    if model.norm == "pre" and model.final_norm:
        return "gpt2"
    if model.norm == "post" and not model.final_norm:
        if d_ff(model) != 4 * model.d_model:
            raise ExportError(
                f"model.d_ff={d_ff(model)} is not 4 x d_model, which OpenAIGPTLMHeadModel (GPT-1) cannot express; "
                "only GPT-1 runs with the default d_ff can be exported."
            )
        return "openai-gpt"
    raise ExportError(
        f"model.norm={model.norm} with model.final_norm={model.final_norm} matches neither GPT-2 (pre-LN with a final "
        "LayerNorm) nor GPT-1 (post-LN without one), so Hugging Face has no class for it."
    )


def hf_config(model: ModelConfig, *, bos_id: int | None = None, eos_id: int | None = None) -> dict[str, Any]:
    """config.json for GPT2LMHeadModel or OpenAIGPTLMHeadModel (dropout 0: our runs train without it)."""
    arch = architecture(model)
    common: dict[str, Any] = {
        "vocab_size": model.vocab_size,
        "n_positions": model.seq_len,
        "n_embd": model.d_model,
        "n_layer": model.n_layer,
        "n_head": model.n_head,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": model.layer_norm_eps,
        "initializer_range": model.init_std,
        "tie_word_embeddings": bool(model.tied_embeddings),
        "torch_dtype": "float32",
    }
    # explicit nulls: GPT2Config would otherwise default both to 50256, outside a small vocabulary
    common["bos_token_id"] = None if bos_id is None else int(bos_id)
    common["eos_token_id"] = None if eos_id is None else int(eos_id)
    if arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            **common,
            "n_ctx": model.seq_len,
            "n_inner": d_ff(model),
            # "gelu_new" is the tanh approximation (our GELU); plain "gelu" would be the erf form.
            "activation_function": "gelu_new" if model.activation == "gelu" else "relu",
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "use_cache": True,
        }
    # OpenAIGPT's ACT_FNS maps "gelu" to gelu_new (the tanh approximation), as the GPT-1 release did.
    return {
        "architectures": ["OpenAIGPTLMHeadModel"],
        "model_type": "openai-gpt",
        **common,
        "afn": "gelu" if model.activation == "gelu" else "relu",
    }


def _get(tree: dict, key: Any) -> Any:
    """Child `key` of a pure-dict level whose sequence indices may be ints or strings."""
    return tree[key] if key in tree else tree[str(key) if isinstance(key, int) else int(key)]


def layer_params(model: ModelConfig, pure: dict) -> list[dict]:
    """Per-layer nested dicts of numpy arrays, for both the plain (blocks.i) and the scanned
    (layers.blocks.p with a leading group axis) parameter layouts."""
    if "layers" in pure:
        period = len(pure["layers"]["blocks"])
        groups = [_get(pure["layers"]["blocks"], p) for p in range(period)]
        return [_index(groups[i % period], i // period) for i in range(model.n_layer)]
    return [_get(pure["blocks"], i) for i in range(model.n_layer)]


def _index(tree: Any, i: int) -> Any:
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return tree[i]


def hf_tensors(model: ModelConfig, pure: dict) -> dict[str, np.ndarray]:
    """Our parameters (nnx.to_pure_dict of the model's nnx.Param state) under the Hugging Face names."""
    arch = architecture(model)
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))  # noqa: E731
    D, V = model.d_model, model.vocab_size
    wte = f32(pure["wte"])[:V]  # drop vocab padding rows
    if arch == "gpt2":
        out = {"transformer.wte.weight": wte, "transformer.wpe.weight": f32(pure["wpe"])}
    else:
        out = {"transformer.tokens_embed.weight": wte, "transformer.positions_embed.weight": f32(pure["wpe"])}
    # Same block names for both: our ln1 / ln2 are HF's ln_1 / ln_2 (GPT-1: after attention / after the MLP).
    for i, layer in enumerate(layer_params(model, pure)):
        attn, mlp = layer["attn"], layer["mlp"]
        h = f"transformer.h.{i}"
        out[f"{h}.ln_1.weight"] = f32(layer["ln1"]["scale"])
        out[f"{h}.ln_1.bias"] = f32(layer["ln1"]["bias"])
        out[f"{h}.attn.c_attn.weight"] = f32(attn["qkv_kernel"]).reshape(D, -1)  # [D, 3, N, H] -> [D, 3D]
        out[f"{h}.attn.c_attn.bias"] = f32(attn["qkv_bias"]).reshape(-1)
        out[f"{h}.attn.c_proj.weight"] = f32(attn["out_kernel"]).reshape(-1, D)  # [N, H, D] -> [D, D]
        out[f"{h}.attn.c_proj.bias"] = f32(attn["out_bias"])
        out[f"{h}.ln_2.weight"] = f32(layer["ln2"]["scale"])
        out[f"{h}.ln_2.bias"] = f32(layer["ln2"]["bias"])
        out[f"{h}.mlp.c_fc.weight"] = f32(mlp["in_kernel"])
        out[f"{h}.mlp.c_fc.bias"] = f32(mlp["in_bias"])
        out[f"{h}.mlp.c_proj.weight"] = f32(mlp["out_kernel"])
        out[f"{h}.mlp.c_proj.bias"] = f32(mlp["out_bias"])
    if arch == "gpt2":
        out["transformer.ln_f.weight"] = f32(pure["ln_f"]["scale"])
        out["transformer.ln_f.bias"] = f32(pure["ln_f"]["bias"])
    if not model.tied_embeddings:
        out["lm_head.weight"] = np.ascontiguousarray(f32(pure["head"])[:, :V].T)  # [D, V] -> [V, D]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export_model(
    m: ModelConfig,
    params: Any,
    out_dir: Path | str,
    *,
    tokenizer_path: Path | str | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write config.json, model.safetensors (and tokenizer.model) for a model config and its
    parameters (an nnx.State of nnx.Param or its pure dict). Returns out_dir."""
    config = hf_config(m, bos_id=bos_id, eos_id=eos_id)  # refuses unsupported models before writing anything
    pure = params if isinstance(params, dict) else nnx.to_pure_dict(params)
    tensors = hf_tensors(m, pure)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", **(metadata or {})})
    if tokenizer_path is not None:  # a SentencePiece model, or the tokenizer.json the run was given
        name = "tokenizer.json" if Path(tokenizer_path).suffix == ".json" else TOKENIZER_FILE
        shutil.copyfile(tokenizer_path, out / name)
    return out


def export_run(run_dir: Path | str, out_dir: Path | str, step: int | None = None) -> Path:
    """Export a run's checkpoint (newest unless step is given) with its tokenizer."""
    architecture(model_config_of(run_config(run_dir)))  # refuse before reading any checkpoint
    run = load_run(run_dir, step)
    bos = eos = None
    if run.tokenizer_path is not None:
        tok = run.tokenizer()
        bos, eos = (tok.bos_id if tok.bos_id >= 0 else None), tok.eos_id
    return export_model(
        run.model_cfg,
        nnx.state(run.model, nnx.Param),
        out_dir,
        tokenizer_path=run.tokenizer_path,
        bos_id=bos,
        eos_id=eos,
        metadata={"source_run": str(Path(run_dir).resolve()), "step": str(run.step), "model": run.model_cfg.name},
    )
