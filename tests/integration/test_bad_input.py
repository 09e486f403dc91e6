"""Every setting a user can get wrong ends in one sentence naming the setting and the fix, before
anything is compiled; and no user-provided file is ever unpickled or loaded as unsafe YAML."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, compose, tiny_overrides, train_in_process
from helpers import one_sentence

from research.config.hydra import to_config
from research.config.validate import validate
from research.errors import ConfigError


@pytest.fixture()
def no_compile(monkeypatch):
    """Fail the test if a run gets as far as building (compiling) its train state."""
    import research.train.loop as loop

    def compiled(*args, **kwargs):
        raise AssertionError("the bad setting was only noticed after compiling")

    monkeypatch.setattr(loop.programs, "build", compiled)


# (case, overrides, text the sentence must contain); {tmp} is the test's temporary folder
CASES = [
    ("heads_do_not_divide", ["model.n_head=3"], "model.d_model=32 is not divisible by model.n_head=3"),
    (
        "seq_len_above_context",
        ["train.seq_len=256"],
        "train.seq_len=256 is above the model's context model.seq_len=128",
    ),
    ("mesh_product_vs_devices", ["mesh.data=2"], "mesh data x fsdp x tensor = 2 but there are 1 devices"),
    ("two_free_mesh_axes", ["mesh.data=-1", "mesh.fsdp=-1"], "only one of mesh.data, mesh.fsdp, mesh.tensor may be -1"),
    ("unknown_mesh_axis_in_rules", ["+mesh.rules.batch=nodes"], "mesh.rules.batch='nodes' names unknown mesh axes"),
    ("zero_learning_rate", ["optim.lr=0"], "optim.lr=0.0 must be positive"),
    ("negative_learning_rate", ["optim.lr=-0.001"], "optim.lr=-0.001 must be positive"),
    ("unknown_schedule", ["optim.schedule=linear"], "optim.schedule='linear' is not one of cosine, constant, wsd"),
    ("zero_steps", ["train.steps=0"], "train.steps=0 must be positive"),
    ("two_budgets", ["train.tokens=100000"], "set exactly one of train.steps, train.tokens, train.tokens_per_param"),
    ("tokens_below_one_step", ["train.steps=null", "train.tokens=100"], "train.tokens=100 is smaller than one step"),
    (
        "tokens_per_param_below_one_step",
        ["train.steps=null", "train.tokens_per_param=0.0001"],
        "smaller than one step of 512 tokens; raise train.tokens_per_param",
    ),
    ("zero_batch", ["train.batch_size=0"], "train.batch_size=0 must be positive"),
    ("microbatches_do_not_divide", ["train.microbatches=3"], "train.microbatches=3 must be a positive divisor"),
    ("streams_do_not_divide", ["train.streams=3"], "train.streams=3 must be a positive divisor of the 8 sequences"),
    ("tokenizer_vocab_above_model", ["data.vocab_size=1024"], "data.vocab_size=1024 is above model.vocab_size=384"),
    ("vocab_too_small_for_the_tokenizer", ["model.vocab_size=200"], "data.vocab_size=200 is too small"),
    ("missing_data_path", ["data.sources=[/nonexistent/corpus]"], "data.sources: '/nonexistent/corpus' does not exist"),
    ("empty_data_folder", ["data.sources=[{tmp}/empty_folder]"], "holds no .txt, .txt.gz"),
    ("empty_data_file", ["data.sources=[{tmp}/empty.txt]"], "contains no text"),
    ("validation_fraction", ["data.val_fraction=1.5"], "data.val_fraction=1.5 must lie in (0, 1)"),
    (
        "unwritable_data_cache",
        ["data.cache_dir={tmp}/a_file/cache"],
        "could not prepare the data under data.cache_dir=",
    ),
    ("unknown_nan_policy", ["train.nan_policy=ignore"], "train.nan_policy='ignore' is not one of skip, rollback, stop"),
    ("negative_spike_factor", ["train.spike_factor=-1"], "train.spike_factor=-1.0 must be non-negative"),
    ("zero_spike_window", ["train.spike_window=0"], "train.spike_window=0 must be at least 1"),
    ("zero_max_bad_steps", ["train.max_bad_steps=0"], "train.max_bad_steps=0 must be at least 1"),
    ("zero_checkpoint_minutes", ["train.checkpoint_minutes=0"], "train.checkpoint_minutes=0.0 must be positive"),
    ("zero_checkpoint_every", ["train.checkpoint_every=0"], "train.checkpoint_every=0 must be positive"),
    ("zero_keep_checkpoints", ["train.keep_checkpoints=0"], "train.keep_checkpoints=0 must be positive"),
    (
        "missing_resume_source",
        ["train.resume_from=/nonexistent/checkpoints"],
        "train.resume_from=/nonexistent/checkpoints does not exist",
    ),
    ("resume_source_outside_run_dir", ["train.resume_from={tmp}/other_run"], "is outside the run directory"),
    (
        "resume_source_without_checkpoints",
        ["train.resume_from={tmp}/other_run", "train.allow_external_resume=true"],
        "holds no checkpoint steps",
    ),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "empty_folder").mkdir()
    (tmp / "empty.txt").write_text("   \n")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "other_run").mkdir()
    return tmp


@pytest.mark.parametrize(("case", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_setting_fails_with_one_sentence_before_compiling(
    case, overrides, expected, inputs, corpus_dir, tmp_path, no_compile
):
    extra = [o.replace("{tmp}", str(inputs)) for o in overrides]
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train_in_process(run_dir, tiny_overrides(corpus_dir, inputs / "data", *extra))
    message = str(err.value)
    assert expected in message
    one_sentence(message)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and results["error"] == message


def test_batch_not_divisible_by_data_shards():
    cfg = to_config(compose(["mesh=dp", "train.batch_size=6", "train.tokens=null", "train.steps=10"]))
    with pytest.raises(ConfigError) as err:
        validate(cfg, n_devices=4)
    assert "train.batch_size=6 is not divisible by the 4 data shards x 1 microbatches; pick a multiple of 4" in str(
        err.value
    )
    one_sentence(str(err.value))


def test_unwritable_run_directory(inputs, corpus_dir, no_compile):
    run_dir = inputs / "a_file" / "run"  # a path through a regular file: no one can create it, root included
    with pytest.raises(ConfigError) as err:
        train_in_process(run_dir, tiny_overrides(corpus_dir, inputs / "data"))
    message = str(err.value)
    assert f"the run directory {run_dir} cannot be written" in message and "choose a writable hydra.run.dir" in message
    one_sentence(message)


def test_run_directory_holding_a_different_config(tmp_path, corpus_dir, no_compile):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = to_config(compose(tiny_overrides(corpus_dir, tmp_path / "data")))
    from omegaconf import OmegaConf

    previous = {"status": "running", "config": OmegaConf.to_container(OmegaConf.structured(old))}
    (run_dir / "results.json").write_text(json.dumps(previous))
    (run_dir / "metrics.jsonl").write_text('{"step": 5, "loss": 5.0}\n')
    # a harmless difference (progress, logging, the bad-step policy) resumes; a real one is refused
    with pytest.raises(ConfigError) as err:
        train_in_process(
            run_dir, tiny_overrides(corpus_dir, tmp_path / "data", "train.batch_size=16", "train.log_every=7")
        )
    message = str(err.value)
    assert f"the run directory {run_dir} holds a run with a different config (train.batch_size: 8 -> 16)" in message
    assert "choose another hydra.run.dir or delete that directory" in message
    one_sentence(message)
    assert json.loads((run_dir / "results.json").read_text()) == previous  # the old records are untouched


def test_checkpoints_link_leading_outside_the_run_directory(tmp_path, corpus_dir, no_compile):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (run_dir / "checkpoints").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as err:
        train_in_process(run_dir, tiny_overrides(corpus_dir, tmp_path / "data"))
    message = str(err.value)
    assert "outside the run directory" in message and "train.allow_external_resume=true" in message
    one_sentence(message)


@pytest.mark.slow
def test_entry_point_unknown_model_exits_2_with_the_sentence(tmp_path):
    run_dir = tmp_path / "never"
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train.py"), "model=nano_zz", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "error: model=nano_zz is not a config in conf/model" in out.stderr
    assert "Traceback" not in out.stderr and not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# Safety of files
