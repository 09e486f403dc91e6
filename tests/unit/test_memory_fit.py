"""train.microbatches=auto (research/memory_fit.py): the choice on the CPU under train.memory_budget_gb, XLA's
figure moving it, and every GPU experiment member fitting H100s through the planner."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
from conftest import ROOT, compose
from helpers import one_sentence
from omegaconf import OmegaConf

from research.config.hydra import to_config
from research.config.schema import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from research.config.validate import validate
from research.errors import ConfigError
from research.planner import make_plan, render_text
from research.train import programs

# 4 layers, 16 sequences of 128 on one device: planned 78.2 MB with nothing split, 6.3 MB at the least
MODEL = ModelConfig(name="t", n_layer=4, d_model=64, n_head=4, vocab_size=384, seq_len=128)


def auto_config(budget_gb: float | None, **train) -> Config:
    return Config(
        model=MODEL,
        data=DataConfig(),
        optim=OptimConfig(),
        train=TrainConfig(batch_size=16, steps=10, microbatches="auto", memory_budget_gb=budget_gb, **train),
        mesh=MeshConfig(),
    )


@pytest.mark.parametrize(
    ("budget_gb", "microbatches", "remat"),
    [
        (None, 1, "none"),  # no limit known on the CPU: nothing split
        (1.0, 1, "none"),  # fits
        (0.025, 4, "none"),  # tight: the fewest microbatches that fit (2 would need 41.9 MB)
        (0.009, 16, "dots_saveable"),  # tighter: one sequence per microbatch is 9.3 MB, so remat steps up
        (0.008, 8, "full"),  # dots_saveable's least is 8.7 MB: full, with the fewest microbatches that fit
    ],
)
def test_the_choice_under_a_cpu_memory_budget(budget_gb, microbatches, remat):
    p = programs.build(auto_config(budget_gb))
    assert (p.microbatches, p.remat) == (microbatches, remat)
    fit = p.fit.record()
    assert (fit["microbatches"], fit["remat"], fit["setting"]) == (microbatches, remat, "auto")
    assert p.record()["microbatches"] == microbatches and p.record()["remat"] == remat
    if budget_gb is None:
        assert fit["usable_bytes"] is None and "set train.memory_budget_gb" in fit["reason"]
    else:
        assert fit["planned_bytes"] <= fit["usable_bytes"] == round(budget_gb * 1e9)
        assert f"train.memory_budget_gb={budget_gb:g}" in fit["reason"]
    if microbatches > 1:
        assert "1 microbatch, remat=none would need 78.2 MB" in fit["reason"]


def test_streams_keep_whole_sub_batches():
    p = programs.build(auto_config(0.025, streams=4))  # 16 rows: 4 microbatches of 4 rows still split in 4
    assert (p.microbatches, p.remat) == (4, "none")
    p = programs.build(auto_config(0.012, streams=4))  # 8 microbatches would leave 2 rows: full remat instead
    assert (p.microbatches, p.remat) == (4, "full")


def test_impossible_budget_is_one_sentence_naming_it_and_the_smallest_that_fits():
    with pytest.raises(ConfigError) as err:
        programs.build(auto_config(0.005))
    message = str(err.value)
    one_sentence(message)
    assert "train.memory_budget_gb=0.005 (5.0 MB usable per device)" in message
    assert "16 microbatches, remat=full (6.3 MB planned)" in message
    assert "a budget of at least 0.0063 GB would fit" in message


class Compiled:
    """A compiled program whose XLA memory figure is `ratio` x the plan of the choice it was built with."""

    def __init__(self, p: programs.Programs, ratio: float | None) -> None:
        self.nbytes = None if ratio is None else int(p.fit.chosen.planned_bytes * ratio)

    def memory_analysis(self):
        if self.nbytes is None:
            return None
        return SimpleNamespace(
            argument_size_in_bytes=self.nbytes, output_size_in_bytes=0, alias_size_in_bytes=0, temp_size_in_bytes=0
        )


def test_xla_figure_confirms_or_moves_the_choice(caplog):
    p = programs.build(auto_config(0.025))  # planned: 4 microbatches, 23.3 MB
    kept, compiled = programs.compile_fitted(p, lambda q: Compiled(q, 1.05))
    assert kept.microbatches == 4 and kept.fit.xla_bytes == compiled.nbytes <= 25_000_000
    assert kept.fit.reason.endswith("; XLA's figure 24.4 MB fits too")
    # XLA's figure 1.3x the plan (30.2 MB) does not fit: the next candidate fitting 1.3x its plan is rebuilt
    with caplog.at_level("INFO", logger="train"):
        moved, compiled = programs.compile_fitted(p, lambda q: Compiled(q, 1.3))
    assert (moved.microbatches, moved.remat) == (8, "none") and moved.fit.xla_bytes == compiled.nbytes
    assert moved.fit.reason.endswith(
        "fits too (XLA's figure for 4 microbatches, remat=none was 30.2 MB, over the budget)"
    )
    (line,) = [r.getMessage() for r in caplog.records if "memory fit" in r.getMessage()]
    assert line.startswith("memory fit (train.microbatches=auto): 8 microbatches, remat=none: ")
    unreported, _ = programs.compile_fitted(p, lambda q: Compiled(q, None))  # no figure (some backends)
    assert unreported.microbatches == 4 and unreported.fit.xla_bytes is None
    with pytest.raises(ConfigError, match=r"planned x 5\.00, as XLA's figure for the last try"):
        programs.compile_fitted(p, lambda q: Compiled(q, 5.0))


def test_a_fixed_count_is_left_alone():
    p = programs.build(dataclasses.replace(auto_config(0.001), train=TrainConfig(batch_size=16, steps=10)))
    assert (p.microbatches, p.remat, p.fit) == (1, "none", None) and p.record()["memory_fit"] is None


# ------------------------------------------------------------------------------ the GPU experiments


def members(experiment: str) -> list[list[str]]:
    """Every member's overrides, from the experiment's hydra.sweeper.params (a grid of comma lists)."""
    params = OmegaConf.load(ROOT / "conf" / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    grid = [[f"{k}={v}" for v in str(values).split(",")] for k, values in params.items()]
    return [list(combo) for combo in itertools.product(*grid)]


# One H100 cannot hold these with float32 master weights, gradients and AdamW moments (16 bytes a parameter:
# 43 GB for 2.7B) plus the bf16 copies and the accumulation buffer: gpt3_ladder runs FSDP over a host's GPUs.
TOO_BIG_FOR_ONE_H100 = {"gpt3_2p7b", "gpt3_6p7b", "gpt3_13b"}


def test_every_gpu_experiment_member_fits_h100s_with_the_automatic_choice():
    seen = set()
    for experiment in ("gpt2_ladder", "gpt3_ladder", "isoflop_gpu"):
        for overrides in members(experiment):
            cfg = to_config(compose([f"+experiment={experiment}", *overrides]))
            validate(cfg)
            assert cfg.train.microbatches == "auto"  # train=gpu's default
            for devices in (8, 1):
                p = make_plan(dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, devices=devices)))
                name = (experiment, p["model"], devices)
                assert p["memory_fit"] is not None and p["memory_fit"]["microbatches"] == p["microbatches"]
                if devices == 1 and p["model"] in TOO_BIG_FOR_ONE_H100:
                    assert p["fits"] is False and p["remat"] == "full", name  # the least memory, still too much
                    assert "would fit, or spread the batch over more devices" in p["memory_fit"]["reason"], name
                    continue
                assert p["fits"] is True, name
                assert p["mem_total_bytes"] <= 0.75 * 80e9 and p["batch_size"] % p["microbatches"] == 0, name
                seen.add((experiment, devices))
    assert len(seen) == 6
    text = render_text(make_plan(to_config(compose(["+experiment=gpt2_ladder", "plan.devices=8"]))))
    assert "automatic fit   train.microbatches=auto -> 2 microbatches, remat=none: " in text
    assert "1 microbatch, remat=none would need 106.67 GB" in text and ": fits (" in text
