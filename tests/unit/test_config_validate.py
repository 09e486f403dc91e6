"""Every validate() rule rejects its bad setting with one sentence naming that setting."""

from __future__ import annotations

import copy

import pytest

from research.config.derived import total_steps
from research.config.schema import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from research.config.validate import validate
from research.errors import ConfigError


def good_config() -> Config:
    model = ModelConfig(name="t", n_layer=2, d_model=32, n_head=4, vocab_size=256, seq_len=64)
    return Config(
        model=model,
        data=DataConfig(vocab_size=256),
        optim=OptimConfig(),
        train=TrainConfig(batch_size=8, steps=10),
        mesh=MeshConfig(),
    )


def test_good_config_passes():
    validate(good_config(), n_devices=1)


def _set(cfg: Config, dotted: str, value):
    obj = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, value)


# (settings to apply, text the message must contain)
BAD = [
    ({"model.norm": "middle"}, "model.norm"),
    ({"model.activation": "swish"}, "model.activation"),
    ({"model.attention": "sparse"}, "model.attention"),
    ({"model.attention_impl": "flash"}, "model.attention_impl"),
    ({"model.remat": "some"}, "model.remat"),
    ({"model.param_dtype": "float16"}, "model.param_dtype"),
    ({"model.compute_dtype": "int8"}, "model.compute_dtype"),
    ({"optim.schedule": "linear"}, "optim.schedule"),
    ({"model.n_layer": 0}, "model.n_layer"),
    ({"model.d_model": -4}, "model.d_model"),
    ({"model.n_head": 0}, "model.n_head"),
    ({"model.vocab_size": 0}, "model.vocab_size"),
    ({"model.seq_len": 0}, "model.seq_len"),
    ({"model.n_head": 5}, "model.d_model=32 is not divisible by model.n_head=5"),
    ({"model.d_ff": 0}, "model.d_ff"),
    ({"model.vocab_pad_multiple": 0}, "model.vocab_pad_multiple"),
    ({"model.attention": "alternating", "model.local_window": 0}, "model.local_window"),
    ({"train.seq_len": 0}, "train.seq_len"),
    ({"train.seq_len": 128}, "train.seq_len=128 is above the model's context model.seq_len=64"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"train.microbatches": 3}, "train.microbatches=3"),
    (
        {"train.microbatches": "most"},
        "train.microbatches='most' must be a positive divisor of train.batch_size=8 or auto",
    ),
    ({"train.memory_budget_gb": 0.0}, "train.memory_budget_gb=0.0 must be positive"),
    ({"train.streams": 0}, "train.streams=0 must be a positive divisor"),
    ({"train.steps": None}, "exactly one of train.steps, train.tokens, train.tokens_per_param"),
    ({"train.tokens": 1000}, "exactly one of train.steps, train.tokens, train.tokens_per_param"),
    ({"train.steps": 0}, "train.steps=0 must be positive"),
    ({"train.steps": None, "train.tokens": 100}, "train.tokens=100 is smaller than one step"),
    ({"train.steps": None, "train.tokens_per_param": -1.0}, "train.tokens_per_param=-1.0 must be positive"),
    ({"train.eval_every": 0}, "train.eval_every"),
    ({"train.log_every": 0}, "train.log_every"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every"),
    ({"train.eval_batches": 0}, "train.eval_batches"),
    ({"train.keep_checkpoints": 0}, "train.keep_checkpoints"),
    ({"optim.lr": 0.0}, "optim.lr=0.0 must be positive"),
    ({"optim.b2": 1.0}, "optim.b2=1.0"),
    ({"optim.weight_decay": -0.1}, "optim.weight_decay"),
    ({"optim.clip_norm": -1.0}, "optim.clip_norm"),
    ({"optim.warmup_fraction": 1.5}, "optim.warmup_fraction"),
    ({"optim.warmup_steps": -1}, "optim.warmup_steps"),
    ({"optim.min_lr_ratio": 2.0}, "optim.min_lr_ratio"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "only one of mesh.data, mesh.fsdp, mesh.tensor may be -1"),
    ({"mesh.tensor": 0}, "mesh.tensor=0"),
    ({"mesh.data": 2}, "mesh data x fsdp x tensor = 2 but there are 1 devices"),
    # fault tolerance (research/train/guards.py, research/checkpoint.py)
    ({"train.nan_policy": "ignore"}, "train.nan_policy='ignore' is not one of skip, rollback, stop"),
    ({"train.debug_poison_kind": "zero"}, "train.debug_poison_kind"),
    ({"train.checkpoint_minutes": 0.0}, "train.checkpoint_minutes=0.0 must be positive"),
    ({"train.spike_factor": -1.0}, "train.spike_factor=-1.0 must be non-negative"),
    ({"train.spike_window": 0}, "train.spike_window=0 must be at least 1"),
    ({"train.max_bad_steps": 0}, "train.max_bad_steps=0 must be at least 1"),
    ({"train.max_rollbacks": 0}, "train.max_rollbacks=0 must be at least 1"),
    ({"train.debug_poison_steps": [0, 3]}, "train.debug_poison_steps has [0]"),
    ({"train.debug_step_delay": -1.0}, "train.debug_step_delay=-1.0 must be non-negative"),
    ({"train.device_peak_flops": 0.0}, "train.device_peak_flops=0.0 must be positive"),
    ({"data.vocab_size": 512}, "data.vocab_size=512 is above model.vocab_size=256"),
    ({"data.val_fraction": 0.0}, "data.val_fraction=0.0 must lie in (0, 1)"),
    ({"train.resume_from": " "}, "train.resume_from is empty"),
]


@pytest.mark.parametrize(("settings", "expected"), BAD, ids=[next(iter(s)) for s, _ in BAD])
def test_bad_setting_is_named(settings, expected):
    cfg = copy.deepcopy(good_config())
    for key, value in settings.items():
        _set(cfg, key, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg, n_devices=1)
    message = str(err.value)
    assert expected in message
    assert message.count("\n") == 0  # one sentence, one line
    assert message.endswith(".")


def test_mesh_fill_not_divisible():
    cfg = good_config()
    cfg.mesh.tensor, cfg.mesh.data = 3, -1
    with pytest.raises(ConfigError, match="cannot fill 8 devices"):
        validate(cfg, n_devices=8)


def test_budget_from_tokens_per_param():
    cfg = good_config()
    cfg.train.steps, cfg.train.tokens_per_param = None, 20
    # 20 x 10,000 params = 200,000 tokens over 8 x 64 = 512 tokens a step -> 391 steps (rounded up)
    assert total_steps(cfg, 10_000) == 391
