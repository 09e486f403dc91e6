"""The validation of a run's config: one pass, before anything is written or compiled.

`validate(cfg, n_devices)` raises ConfigError with one sentence naming the first impossible setting
and its fix. With n_devices it also checks the mesh against the devices and the batch against the
mesh; without, what the config alone decides (the planner's case).
"""

from __future__ import annotations

from typing import Any

from research.budget import budget
from research.config.derived import batch_tokens, train_seq_len
from research.config.schema import CHOICES, Config
from research.errors import ConfigError
from research.parallel.mesh import check_sizes, mesh_shape
from research.parallel.rules import logical_shards, make_rules


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config, n_devices: int | None = None) -> None:
    """Raise ConfigError with one sentence for the first impossible setting found."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}; pick one of those.")
    _validate_model(cfg)
    _validate_batch_and_budget(cfg)
    _validate_cadence(cfg)
    _validate_fault_tolerance(cfg)
    _validate_data(cfg)
    _validate_optim(cfg)
    check_sizes(cfg.mesh)
    rules = make_rules(cfg.mesh.rules)
    if n_devices is not None:
        sizes = mesh_shape(cfg.mesh, n_devices)
        check_batch_split(cfg.train, logical_shards(sizes, rules, "batch"))


def fixed_microbatches(train: Any) -> Any:
    """train.microbatches, with auto counted as 1 (the automatic choice only takes counts that split)."""
    return 1 if train.microbatches == "auto" else train.microbatches


def check_batch_split(train: Any, shards: int) -> None:
    """The global batch splits evenly over the data shards, the microbatches and (when set) the streams."""
    microbatches = fixed_microbatches(train)
    parts = shards * microbatches * (train.streams or 1)
    if train.batch_size % parts:
        streams = f" x {train.streams} streams" if train.streams else ""
        raise ConfigError(
            f"train.batch_size={train.batch_size} is not divisible by the {shards} data shards x "
            f"{microbatches} microbatches{streams}; pick a multiple of {parts}."
        )


def _validate_model(cfg: Config) -> None:
    model = cfg.model
    for key in ("n_layer", "d_model", "n_head", "vocab_size", "seq_len"):
        if _get(model, key) <= 0:
            raise ConfigError(f"model.{key}={_get(model, key)} must be a positive integer; set it to one.")
    if model.d_head is None and model.d_model % model.n_head:
        raise ConfigError(
            f"model.d_model={model.d_model} is not divisible by model.n_head={model.n_head}; "
            "choose n_head dividing d_model or set model.d_head explicitly."
        )
    if model.d_ff is not None and model.d_ff <= 0:
        raise ConfigError(f"model.d_ff={model.d_ff} must be positive; set it or leave it null for 4 x d_model.")
    if model.vocab_pad_multiple < 1:
        raise ConfigError(
            f"model.vocab_pad_multiple={model.vocab_pad_multiple} must be at least 1; use 1 for no padding."
        )
    if model.attention == "alternating" and model.local_window < 1:
        raise ConfigError(
            f"model.local_window={model.local_window} must be at least 1 with model.attention=alternating."
        )
    if model.scan_layers and model.attention == "alternating" and model.n_layer % 2:
        raise ConfigError(
            f"model.scan_layers=true with model.attention=alternating needs an even model.n_layer "
            f"(got {model.n_layer}); use an even depth or model.scan_layers=false."
        )


def _validate_batch_and_budget(cfg: Config) -> None:
    train = cfg.train
    seq = train_seq_len(cfg)
    if seq <= 0:
        raise ConfigError(f"train.seq_len={seq} must be positive; set it or leave it null for the model's context.")
    if seq > cfg.model.seq_len:
        raise ConfigError(
            f"train.seq_len={seq} is above the model's context model.seq_len={cfg.model.seq_len}; "
            "lower train.seq_len or raise model.seq_len."
        )
    if train.batch_size <= 0:
        raise ConfigError(f"train.batch_size={train.batch_size} must be positive; set a positive global batch.")
    microbatches = fixed_microbatches(train)
    if (
        isinstance(microbatches, bool)
        or not isinstance(microbatches, int)
        or microbatches < 1
        or train.batch_size % microbatches
    ):
        raise ConfigError(
            f"train.microbatches={train.microbatches!r} must be a positive divisor of "
            f"train.batch_size={train.batch_size} or auto; choose one that divides the batch."
        )
    if train.memory_budget_gb is not None and not train.memory_budget_gb > 0:
        raise ConfigError(
            f"train.memory_budget_gb={train.memory_budget_gb} must be positive; give the usable GB per device "
            "or null for the device's own limit."
        )
    micro_rows = train.batch_size // microbatches
    if train.streams is not None and (train.streams < 1 or micro_rows % train.streams):
        raise ConfigError(
            f"train.streams={train.streams} must be a positive divisor of the {micro_rows} sequences per "
            "microbatch (train.batch_size / train.microbatches); choose one that divides them, or null for automatic."
        )
    budgets = [k for k in ("steps", "tokens", "tokens_per_param") if getattr(train, k) is not None]
    if len(budgets) != 1:
        raise ConfigError(
            f"set exactly one of train.steps, train.tokens, train.tokens_per_param (got {budgets or 'none'}); "
            "null the others with e.g. train.steps=null."
        )
    key = budgets[0]
    if getattr(train, key) <= 0:
        raise ConfigError(f"train.{key}={getattr(train, key)} must be positive; give a positive budget.")
    per_step = batch_tokens(cfg)
    if train.tokens is not None and train.tokens < per_step:
        raise ConfigError(
            f"train.tokens={train.tokens} is smaller than one step (batch_size x seq_len = {per_step} tokens); "
            "raise train.tokens or shrink the batch."
        )
    if train.tokens_per_param is not None and budget(cfg).steps < 1:
        n = budget(cfg).params_nonembed
        raise ConfigError(
            f"the token budget ({train.tokens_per_param} x {n} non-embedding params) is smaller than one step of "
            f"{per_step} tokens; raise train.tokens_per_param or shrink the batch."
        )


def _validate_cadence(cfg: Config) -> None:
    for key in ("eval_every", "log_every", "checkpoint_every", "eval_batches", "keep_checkpoints"):
        if getattr(cfg.train, key) <= 0:
            raise ConfigError(f"train.{key}={getattr(cfg.train, key)} must be positive; set it to at least 1.")
    if not cfg.train.checkpoint_minutes > 0:
        raise ConfigError(
            f"train.checkpoint_minutes={cfg.train.checkpoint_minutes} must be positive; use a large value such as "
            "1e9 to save only every train.checkpoint_every steps."
        )


def _validate_fault_tolerance(cfg: Config) -> None:
    train = cfg.train
    if train.spike_factor < 0:
        raise ConfigError(
            f"train.spike_factor={train.spike_factor} must be non-negative; use 0 to disable spike detection."
        )
    if train.spike_window < 1:
        raise ConfigError(f"train.spike_window={train.spike_window} must be at least 1; use e.g. 100 steps.")
    if train.max_bad_steps < 1:
        raise ConfigError(f"train.max_bad_steps={train.max_bad_steps} must be at least 1; use e.g. 3.")
    if train.max_rollbacks < 1:
        raise ConfigError(f"train.max_rollbacks={train.max_rollbacks} must be at least 1; use e.g. 5.")
    bad = [s for s in train.debug_poison_steps if not isinstance(s, int) or s < 1]
    if bad:
        raise ConfigError(f"train.debug_poison_steps has {bad}, not positive step numbers; list steps from 1.")
    if train.debug_step_delay < 0:
        raise ConfigError(f"train.debug_step_delay={train.debug_step_delay} must be non-negative; use 0 (the default).")
    if train.device_peak_flops is not None and train.device_peak_flops <= 0:
        raise ConfigError(
            f"train.device_peak_flops={train.device_peak_flops} must be positive; leave it null to use the peak table."
        )
    if train.resume_from is not None and not str(train.resume_from).strip():
        raise ConfigError("train.resume_from is empty; give a checkpoints folder or run directory, or null.")


def _validate_data(cfg: Config) -> None:
    data, model = cfg.data, cfg.model
    if isinstance(data.vocab_size, int) and data.vocab_size > model.vocab_size:
        raise ConfigError(
            f"data.vocab_size={data.vocab_size} is above model.vocab_size={model.vocab_size}, so the tokenizer "
            "would emit ids the model cannot embed; set data.vocab_size <= model.vocab_size (it follows "
            "model.vocab_size by default)."
        )
    if not 0 < data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={data.val_fraction} must lie in (0, 1); use e.g. 0.02.")


def _validate_optim(cfg: Config) -> None:
    optim = cfg.optim
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr={optim.lr} must be positive; set a learning rate such as 3e-4.")
    if not (0 <= optim.b1 < 1 and 0 <= optim.b2 < 1):
        raise ConfigError(f"optim.b1={optim.b1} and optim.b2={optim.b2} must lie in [0, 1); use e.g. 0.9 and 0.95.")
    if optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={optim.weight_decay} must be non-negative; use 0 to disable it.")
    if optim.clip_norm < 0:
        raise ConfigError(f"optim.clip_norm={optim.clip_norm} must be non-negative; use 0 to disable clipping.")
    if not 0 <= optim.warmup_fraction < 1:
        raise ConfigError(f"optim.warmup_fraction={optim.warmup_fraction} must lie in [0, 1); use e.g. 0.02.")
    if optim.warmup_steps is not None and optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} must be non-negative; use 0 for no warmup.")
    if not 0 <= optim.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio={optim.min_lr_ratio} must lie in [0, 1]; GPT-3 uses 0.1.")
