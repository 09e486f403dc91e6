"""Sweeps: the experiment files, per-size rules, Hydra multiruns that skip finished members, survive a
failing one and resume an interrupted one, the SLURM launcher config and submitit's local launcher."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose, tiny_overrides
from omegaconf import OmegaConf

from research.errors import ConfigError
from research.metrics import read_jsonl
from research.sweep import report, resolvers, rules

TRAIN = str(ROOT / "experiments" / "train.py")
# The tiny members of the real cpu_sweep experiment: its ladder, names and per-size rules, a budget of
# 2 tokens per parameter (13 to 56 steps) on the fixture corpus.
TINY_LADDER = ["+experiment=cpu_sweep", "train.steps=null", "train.tokens=null", "train.tokens_per_param=2"]


def multirun(sweep_dir: Path, overrides: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))  # as `make` sets it
    cmd = [sys.executable, TRAIN, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out


def summary_rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with (sweep_dir / "summary.csv").open() as fh:
        return {row["run_name"]: row for row in csv.DictReader(fh)}


def snapshot(sweep_dir: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every record a training run would rewrite."""
    out = {}
    for path in sorted(sweep_dir.rglob("*")):
        if path.is_file() and (path.name in ("results.json", "metrics.jsonl") or "tfevents" in path.name
                               or "checkpoints" in path.parts):  # fmt: skip
            out[str(path.relative_to(sweep_dir))] = (path.stat().st_mtime_ns, path.read_bytes())
    return out


@pytest.fixture(scope="module")
def ladder_sweep(tmp_path_factory, corpus_dir):
    base = tmp_path_factory.mktemp("sweep")
    sweep_dir = base / "runs" / "tiny_ladder"
    overrides = [*tiny_overrides(corpus_dir, base / "data"), *TINY_LADDER, "sweep.size=nano_3k,nano_7k,nano_14k"]
    first = multirun(sweep_dir, overrides)
    return sweep_dir, overrides, first


# ---------------------------------------------------------------------------------------------
# Multiruns


def test_three_member_sweep_completes_then_trains_nothing(ladder_sweep):
    sweep_dir, overrides, first = ladder_sweep
    log = first.stdout + first.stderr
    names = ["nano_3k-tpp2", "nano_7k-tpp2", "nano_14k-tpp2"]
    rows = summary_rows(sweep_dir)
    assert sorted(rows) == sorted(names)
    assert {r["status"] for r in rows.values()} == {"completed"}
    assert float(rows["nano_14k-tpp2"]["params_nonembed"]) > float(rows["nano_3k-tpp2"]["params_nonembed"])
    for name in names:
        assert f"] {name} completed: val loss" in log
    assert "[member 1/3]" in log and "[member 3/3]" in log and "tokens/s" in log

    before = snapshot(sweep_dir)
    assert sum(p.endswith("metrics.jsonl") for p in before) == 3
    again = multirun(sweep_dir, overrides)
    log2 = again.stdout + again.stderr
    assert snapshot(sweep_dir) == before  # no record rewritten, no metrics row, no checkpoint, no event
    assert log2.count("completed earlier (val loss") == 3
    assert "steps x" not in log2  # the loop's "model ...: N params, S steps x B tokens" line: nothing trained
    assert {r["status"] for r in summary_rows(sweep_dir).values()} == {"completed"}


def test_next_member_compiles_while_the_current_one_trains(tmp_path, corpus_dir):
    """With a cold compilation cache, member 2's init, train and eval programs come from the cache that
    the compile-ahead filled while member 1 trained; both records say what the compiling cost."""
    sweep_dir = tmp_path / "runs" / "ahead"
    overrides = [*tiny_overrides(corpus_dir, tmp_path / "data"), *TINY_LADDER, "sweep.size=nano_3k,nano_7k"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_LOG_COMPILES": "1"}  # fmt: skip
    cmd = [sys.executable, TRAIN, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    second = log[log.index("[member 2/2]") :]
    for program in ("jit_init", "jit_train_step", "jit_eval_step"):
        assert f"Persistent compilation cache hit for '{program}'" in second, program
    first, ahead = (json.loads((sweep_dir / n / "results.json").read_text()) for n in ("nano_3k-tpp2", "nano_7k-tpp2"))
    assert first["compile_ahead_seconds"] is None and first["compile_seconds"] > 0
    assert ahead["compile_ahead_seconds"] > 0 and ahead["compile_ahead_wait_seconds"] >= 0
    assert ahead["startup_seconds"] > 0 and ahead["compile_seconds"] < first["compile_seconds"]
    report = subprocess.run([sys.executable, "-m", "research.sweep", "report", str(sweep_dir)], capture_output=True,
                            text=True, cwd=ROOT, env=env)  # fmt: skip
    assert re.search(r"nano_7k-tpp2 .* overhead [\d.]+ s \(start-up [\d.]+, compiling [\d.]+, waited [\d.]+ for the "
                     r"compile ahead\) = [\d.]+% of training", report.stdout), report.stdout  # fmt: skip


def test_sweep_members_record_their_hparams_for_tensorboard(ladder_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    sweep_dir, _, _ = ladder_sweep
    acc = EventAccumulator(str(sweep_dir / "nano_7k-tpp2" / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    info = metadata.parse_session_start_info_plugin_data(content)
    hp = {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in info.hparams.items()}
    assert hp["model"] == "nano_7k" and hp["params_nonembed"] == 7272 and hp["tokens_per_param"] == 2
    assert hp["lr"] == pytest.approx(rules.lr_rule(7272, 3e-3, 1e5), rel=1e-6)
    assert "val/loss" in acc.Tags()["scalars"]  # the metric the HParams table shows next to them


def test_hparams_dashboard_tabulates_every_member(ladder_sweep):
    """What `tensorboard --logdir <sweep dir>` shows in its HParams tab, through the plugin's own backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    sweep_dir, _, _ = ladder_sweep
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep_dir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(sweep_dir))
    ctx = backend_context.Context(base_plugin.TBContext(data_provider=provider, logdir=str(sweep_dir), multiplexer=mux))
    rc = context.RequestContext()
    content = ctx.hparams_metadata(rc, "")
    assert sorted(content) == ["nano_14k-tpp2/tb", "nano_3k-tpp2/tb", "nano_7k-tpp2/tb"]
    exp = ctx.experiment_from_metadata(rc, "", True, content, ctx.hparams_from_data_provider(rc, "", None))
    assert {"model", "params_nonembed", "lr", "batch_size", "warmup_steps", "tokens"} <= {
        h.name for h in exp.hparam_infos
    }
    assert {"val/loss", "train/loss"} <= {m.name.tag for m in exp.metric_infos}


def test_failing_member_is_recorded_and_the_sweep_goes_on(tmp_path, corpus_dir):
    sweep_dir = tmp_path / "runs" / "tiny_fail"
    overrides = [*tiny_overrides(corpus_dir, tmp_path / "data"), "train.experiment=tiny_fail",
                 "train.run_name=h${model.n_head}", "train.steps=10", "model.n_head=3,2"]  # fmt: skip
    out = multirun(sweep_dir, overrides)
    rows = summary_rows(sweep_dir)
    assert rows["h2"]["status"] == "completed"  # ran after the failure
    assert rows["h3"]["status"] == "failed" and "model.n_head=3" in rows["h3"]["error"]
    failed = json.loads((sweep_dir / "h3" / "results.json").read_text())
    assert failed["status"] == "failed" and "not divisible by model.n_head=3" in failed["error"]
    assert "h3 FAILED" in out.stdout + out.stderr


def test_a_failure_outside_the_loop_is_recorded_not_raised(tmp_path, monkeypatch, corpus_dir):
    """Any exception (not only a bad setting) becomes a failed results.json in a sweep; a single run raises."""
    import experiments.train as entry

    def boom(cfg, run_dir):
        raise RuntimeError("out of memory while allocating 3 TB")

    monkeypatch.setattr(entry, "train_member", boom)
    cfg = compose(tiny_overrides(corpus_dir, tmp_path / "data"))
    assert entry.run_member(cfg, tmp_path / "member", multirun=True) is None
    rec = json.loads((tmp_path / "member" / "results.json").read_text())
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: out of memory while allocating 3 TB"
    assert rec["config"]["model"]["name"] == "nano_xs"
    with pytest.raises(RuntimeError):
        entry.run_member(cfg, tmp_path / "single", multirun=False)


def test_interrupted_member_resumes_from_its_checkpoint(ladder_sweep, tmp_path):
    """A member killed after its step-50 checkpoint (results.json still says running) resumes there."""
    sweep_dir, overrides, _ = ladder_sweep
    resumed_dir = tmp_path / "runs" / "tiny_ladder"
    shutil.copytree(sweep_dir / "nano_14k-tpp2", resumed_dir / "nano_14k-tpp2")
    member = resumed_dir / "nano_14k-tpp2"
    rec = json.loads((member / "results.json").read_text())
    last = rec["steps"]  # 57: ceil(2 x 14,496 / 512)
    kept = sorted(int(p.name) for p in (member / "checkpoints").iterdir() if p.name.isdigit())
    before = max(s for s in kept if s < last)  # 50 (checkpoint_every=10)
    assert kept[-1] == last and before == last // 10 * 10
    shutil.rmtree(member / "checkpoints" / str(last))  # killed between the step-50 checkpoint and the end
    rec.update(status="running", final_val_loss=None)
    (member / "results.json").write_text(json.dumps(rec))

    ov = [o for o in overrides if not o.startswith("sweep.size=")] + ["sweep.size=nano_14k"]
    multirun(resumed_dir, ov)
    assert f"resumed from the checkpoint at step {before}" in (member / "train.log").read_text()
    done = json.loads((member / "results.json").read_text())
    assert done["status"] == "completed" and done["final_val_loss"] is not None
    steps = [r["step"] for r in read_jsonl(member / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == last  # rows past step 50 rewritten once, not twice


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_member_sweep(tmp_path, corpus_dir):
    sweep_dir = tmp_path / "runs" / "tiny_submitit"
    overrides = [*tiny_overrides(corpus_dir, tmp_path / "data"), *TINY_LADDER, "sweep.size=nano_3k,nano_7k",
                 "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]  # fmt: skip
    multirun(sweep_dir, overrides)
    rows = summary_rows(sweep_dir)
    assert sorted(rows) == ["nano_3k-tpp2", "nano_7k-tpp2"]
    assert {r["status"] for r in rows.values()} == {"completed"}
    assert any((sweep_dir / ".submitit").iterdir())  # submitit's own job folders


# ---------------------------------------------------------------------------------------------
# Experiment files and rules (no training)


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
    budget = [{"tokens_per_param": 20, "tokens": None, "steps": None}, {"tokens_per_param": None, "tokens": 2.5e6,
              "steps": None}, {"tokens_per_param": None, "tokens": None, "steps": 1000}]  # fmt: skip
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
        cfg = hydra_compose(config_name="config", return_hydra_config=True,
                            overrides=["+experiment=gpt3_ladder", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                       "hydra.launcher.array_parallelism=4"])  # fmt: skip
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
