"""research/sweep/: the per-size rules, the experiment files' members as the resolvers make them, the SLURM launcher config, each experiment's law."""

from __future__ import annotations

import pytest
from conftest import ROOT, compose
from omegaconf import OmegaConf

from research.errors import ConfigError
from research.sweep import report, resolvers, rules


def test_lr_batch_and_warmup_rules_give_the_documented_values():
    # lr = 3e-3 (N / 1e5)^(-1/3): 8x the parameters halve the rate
    assert rules.lr_rule(1e5, 3e-3, 1e5) == 3e-3
    assert rules.lr_rule(8e5, 3e-3, 1e5) == pytest.approx(1.5e-3)
    assert rules.lr_rule(1.25e4, 3e-3, 1e5) == pytest.approx(6e-3)
    assert rules.lr_rule(85056000, 6e-4, 85056000) == 6e-4
    # batch = 16 (N / 1e5)^(1/2) sequences, a power of two, clipped to [8, 32] (isoflop_cpu)
    sizes = (3312, 39520, 84912, 1e5, 4e5, 1e7)
    assert [rules.batch_rule(n, 16, 1e5, 0.5, 8, 32) for n in sizes] == [8, 8, 16, 16, 32, 32]
    # warmup = N tokens, at most 10% of the run
    assert rules.warmup_rule(steps=830, batch_tokens=2048, warmup_tokens=84912, max_fraction=0.1) == 42
    assert rules.warmup_rule(steps=50, batch_tokens=512, warmup_tokens=1e6, max_fraction=0.1) == 5
    assert rules.sci(3e11) == "3e11" and rules.sci(1.5e13) == "1.5e13" and rules.sci(20.0) == "20"
    budget = [
        {"tokens_per_param": 20, "tokens": None, "steps": None},
        {"tokens_per_param": None, "tokens": 2.5e6, "steps": None},
        {"tokens_per_param": None, "tokens": None, "steps": 1000},
    ]
    names = [resolvers.RESOLVERS["sweep.budget"](_root_=OmegaConf.create({"train": b})) for b in budget]
    assert names == ["tpp20", "D2.5e6", "S1000"]


def _members(experiment: str, settings: list[dict]) -> list[dict]:
    """Resolved configs of an experiment's members: one compose, then the swept keys set per member."""
    cfg = compose([f"+experiment={experiment}"])
    out = []
    for values in settings:
        for key, value in values.items():
            OmegaConf.update(cfg, key, value)
        out.append(OmegaConf.to_container(cfg, resolve=True))
    return out


def _n(member: dict) -> int:
    return resolvers.params_nonembed(resolvers.model_from(member["model"]))


def test_cpu_sweep_members_follow_the_rules_and_span_30x():
    params = OmegaConf.load(ROOT / "conf" / "experiment" / "cpu_sweep.yaml").hydra.sweeper.params
    sizes = params["sweep.size"].split(",")
    members = _members("cpu_sweep", [{"sweep.size": s} for s in sizes])
    n = [_n(m) for m in members]
    assert len(n) >= 6 and n == sorted(n) and n[-1] / n[0] >= 30
    for m, size, n_i in zip(members, sizes, n, strict=True):
        assert m["train"]["run_name"] == f"{size}-D2.5e6" and m["model"]["name"] == size
        assert m["optim"]["lr"] == rules.lr_rule(n_i, 3e-3, 1e5, -0.3333333)
        assert m["train"]["batch_size"] * m["train"]["eval_batches"] == 256  # one validation set for all
        steps = -(-2_500_000 // (8 * 128))  # the same D and batch for every size (Kaplan's L(N))
        assert 1 <= m["optim"]["warmup_steps"] <= 0.1 * steps
        assert (m["train"]["seed"], m["train"]["seq_len"], m["data"]["name"]) == (0, 128, "shakespeare")
    largest = members[-1]
    assert largest["optim"]["lr"] == pytest.approx(3.17e-3, rel=1e-3)
    assert {m["train"]["tokens"] for m in members} == {2_500_000}  # below Shakespeare's 2.75M: no repeats
    assert {m["train"]["batch_size"] for m in members} == {8}


def test_isoflop_cpu_centres_five_sizes_on_each_optimum():
    experiment = OmegaConf.load(ROOT / "conf" / "experiment" / "isoflop_cpu.yaml")
    grid, k = experiment.hydra.sweeper.params, experiment.sweep.optimum_tokens_per_param
    budgets = [float(c) for c in str(grid["sweep.compute"]).split(",")]
    offsets = [int(o) for o in str(grid["sweep.offset"]).split(",")]
    assert len(budgets) >= 3 and offsets == [-2, -1, 0, 1, 2]
    for c in budgets:
        members = _members("isoflop_cpu", [{"sweep.compute": c, "sweep.offset": o} for o in offsets])
        n = [_n(m) for m in members]
        assert n == sorted(set(n))  # five distinct sizes
        n_opt = rules.optimum_params(c, k)
        assert n[1] < n_opt < n[3]  # centred on the expected optimum
        for m, n_i in zip(members, n, strict=True):
            assert m["train"]["tokens"] == round(c / (6 * n_i))  # D = C / (6 N)
            assert m["train"]["run_name"] == f"{m['model']['name']}-C{rules.sci(c)}"


def test_gpt3_ladder_takes_the_papers_batch_and_learning_rate():
    for model, lr, batch in (("gpt3_125m", 6e-4, 256), ("gpt3_1p3b", 2e-4, 512), ("gpt3_13b", 1e-4, 1024)):
        cfg = OmegaConf.to_container(compose(["+experiment=gpt3_ladder", f"model={model}"]), resolve=True)
        assert cfg["optim"]["lr"] == lr and cfg["train"]["batch_size"] == batch  # Table 2.1: 0.5M, 1M, 2M tokens
        assert cfg["train"]["run_name"] == f"{model}-tpp20" and cfg["mesh"]["name"] == "fsdp"
    for name in ("gpt2_ladder", "isoflop_gpu"):
        cfg = OmegaConf.to_container(compose([f"+experiment={name}"]), resolve=True)
        assert cfg["train"]["experiment"] == name and cfg["optim"]["warmup_steps"] >= 1


def test_slurm_launcher_config_composes():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from research.config.hydra import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose(
            config_name="config",
            return_hydra_config=True,
            overrides=[
                "+experiment=gpt3_ladder",
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.array_parallelism=4",
            ],
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.array_parallelism == 4
    assert launcher.gpus_per_node == 8 and launcher.timeout_min == 1440 and launcher.max_num_timeout == 3
    assert cfg.hydra.sweep.dir == "runs/gpt3_ladder"
    GlobalHydra.instance().clear()


def test_law_of_each_experiment_for_make_sweep():
    assert report.experiment_law("cpu_sweep") == "kaplan_n"
    assert report.experiment_law("isoflop_cpu") == "isoflop"
    with pytest.raises(ConfigError, match="conf/experiment"):
        report.experiment_law("no_such_experiment")


def test_sweep_seeds_repeat_every_member_and_name_the_extra_seeds():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from research.config.hydra import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose(config_name="config", return_hydra_config=True, overrides=["+experiment=cpu_sweep"])
        assert OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)["train.seed"] == "0,1"
        overrides = ["+experiment=cpu_sweep", "sweep.seeds=[0,1,2]"]
        three = hydra_compose(config_name="config", return_hydra_config=True, overrides=overrides)
        assert three.hydra.sweeper.params["train.seed"] == "0,1,2"
    GlobalHydra.instance().clear()
    names = [m["train"]["run_name"] for m in _members("cpu_sweep", [{"train.seed": s} for s in (0, 1)])]
    assert names == ["nano_25k-D2.5e6", "nano_25k-D2.5e6-s1"]  # the first seed keeps a single-seed sweep's names
    fit_args = report.experiment_fit_args("cpu_sweep")
    assert (
        report.experiment_law("cpu_sweep") == "kaplan_n"
        and "--irreducible" in fit_args
        and "--holdout-largest 1" in fit_args
    )
