"""Sampling (research/sampling.py, GPT.decode, experiments/sample.py): the KV cache changes nothing but the cost."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from flax import nnx
from models import randomized, tiny
from tiny_run import tiny_run

from research.inference.sampling import Generator, filter_logits, generate_full

TOKENS = np.random.default_rng(1).integers(0, 61, size=(2, 16))


@pytest.mark.parametrize(
    "overrides",
    [
        {"norm": "post", "final_norm": False},
        {"attention": "alternating", "scan_layers": True},
        {"tied_embeddings": False, "vocab_pad_multiple": 8},
        {"compute_dtype": "bfloat16"},
    ],
)
def test_decode_equals_forward(overrides):
    """Prefill 5 positions, then one position at a time: the logits of the full forward pass, for GPT-1
    (post-LN), GPT-3 (banded local layers, here under scan_layers), an untied padded head and bf16 compute
    (the plain GPT-2 model is covered by the generation tests below)."""
    graphdef, params = nnx.split(randomized(tiny(**overrides)))

    @jax.jit
    def both(params):
        model = nnx.merge(graphdef, params)
        first, cache = model.decode(TOKENS[:, :5], model.init_cache(2), jnp.int32(0))

        def step(carry, t):  # parameters ride in the carry: nnx modules do not cross trace levels
            p, cache = carry
            token = jax.lax.dynamic_slice_in_dim(TOKENS, t, 1, axis=1)
            logits, cache = nnx.merge(graphdef, p).decode(token, cache, t)
            return (p, cache), logits[:, 0]

        _, rest = jax.lax.scan(step, (params, cache), jnp.arange(5, 16))
        return model(TOKENS), jnp.concatenate([first, rest.transpose(1, 0, 2)], axis=1)

    full, decoded = both(params)
    tol = 5e-2 if overrides.get("compute_dtype") == "bfloat16" else 1e-5
    np.testing.assert_allclose(decoded, full, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def model():
    """One model object for the generation tests: jit caches by graph definition, so they share compilations."""
    return randomized(tiny(), seed=2)


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=0.9, top_k=20, top_p=0.9, seed=3)])
def test_kv_cache_generation_equals_full_recomputation(model, settings):
    """Greedy and sampled (same seed): the same tokens with the cache as recomputing every prefix, also past
    the 16-token context (the window slides by half a context on both paths)."""
    prompt = [3, 14, 15, 9]
    cached = list(Generator(model).generate(prompt, 30, **settings))
    assert cached == generate_full(model, prompt, 30, **settings)
    assert len(cached) == 30


def test_same_seed_same_tokens_other_seed_differs(model):
    gen = Generator(model)
    kw = dict(temperature=1.0, top_k=0, top_p=1.0)
    a = list(gen.generate([5], 12, seed=7, **kw))
    assert a == list(gen.generate([5], 12, seed=7, **kw))
    assert a != list(gen.generate([5], 12, seed=8, **kw))
    stop = a[3]
    assert list(gen.generate([5], 12, seed=7, stop_ids=(stop,), **kw))[-1] == stop


def test_filter_logits_top_k_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, *map(jnp.asarray, kw.values()))))[0]  # noqa: E731
    assert kept(t=1.0, k=2, p=1.0).tolist() == [True, True, False, False, False]
    assert kept(t=1.0, k=0, p=0.6).tolist() == [True, True, False, False, False]  # 0.5 < 0.6, then 0.7 >= 0.6
    assert kept(t=1.0, k=0, p=0.1).tolist() == [True, False, False, False, False]  # the top token always stays
    assert kept(t=1.0, k=4, p=0.8).tolist() == [True, True, True, False, False]
    assert kept(t=1.0, k=0, p=1.0).all()
    key = jax.random.key(0)
    draws = [
        int(jax.random.categorical(jax.random.fold_in(key, i), filter_logits(logits, 1.0, 3, 1.0))[0])
        for i in range(50)
    ]
    assert set(draws) <= {0, 1, 2} and len(set(draws)) > 1


@pytest.mark.slow
def test_sample_cli_on_a_trained_run(tmp_path_factory, corpus_dir, capsys):
    """experiments/sample.py on a real run: prompt first, then streamed text; the same seed gives the same text."""
    from experiments.sample import main

    run_dir = tiny_run(tmp_path_factory, corpus_dir)
    args = [f"run={run_dir}", "prompt=ROMEO:", "max_new_tokens=40", "seed=5", "top_k=50"]
    first = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "sample.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ROMEO:") and len(first.stdout) > len("ROMEO:\n")
    assert "step 20" in first.stderr and "tokens/s" in first.stderr
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out == first.stdout
    assert main([f"run={run_dir}", "nonsense=1"]) == 2
    assert "not a setting" in capsys.readouterr().err
