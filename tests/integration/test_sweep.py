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

from research.metrics import read_jsonl
from research.sweep import rules

TRAIN = str(ROOT / "experiments" / "train.py")
# The tiny members of the real cpu_sweep experiment: its ladder, names and per-size rules, a budget of
# 2 tokens per parameter (13 to 56 steps) on the fixture corpus.
TINY_LADDER = [
    "+experiment=cpu_sweep",
    "sweep.seeds=[0]",
    "train.steps=null",
    "train.tokens=null",
    "train.tokens_per_param=2",
]


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
        if path.is_file() and (
            path.name in ("results.json", "metrics.jsonl") or "tfevents" in path.name or "checkpoints" in path.parts
        ):
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
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_LOG_COMPILES": "1",
    }
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
    report = subprocess.run(
        [sys.executable, "-m", "research.sweep", "report", str(sweep_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert re.search(
        r"nano_7k-tpp2 .* overhead [\d.]+ s \(start-up [\d.]+, compiling [\d.]+, waited [\d.]+ for the "
        r"compile ahead\) = [\d.]+% of training",
        report.stdout,
    ), report.stdout


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
    overrides = [
        *tiny_overrides(corpus_dir, tmp_path / "data"),
        "train.experiment=tiny_fail",
        "train.run_name=h${model.n_head}",
        "train.steps=10",
        "model.n_head=3,2",
    ]
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
    overrides = [
        *tiny_overrides(corpus_dir, tmp_path / "data"),
        *TINY_LADDER,
        "sweep.size=nano_3k,nano_7k",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
    ]
    multirun(sweep_dir, overrides)
    rows = summary_rows(sweep_dir)
    assert sorted(rows) == ["nano_3k-tpp2", "nano_7k-tpp2"]
    assert {r["status"] for r in rows.values()} == {"completed"}
    assert any((sweep_dir / ".submitit").iterdir())  # submitit's own job folders


# ---------------------------------------------------------------------------------------------
# Experiment files and rules (no training)
