"""Config schemas (Hydra structured configs) and validation.

Every YAML file under conf/ extends one of these dataclasses, so a typo in a key is an error at
compose time. `validate()` rejects impossible settings with one sentence naming the setting and
the fix, before anything is compiled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A setting the user can fix; the message is one sentence naming it."""


@dataclass
class ModelConfig:
    name: str = MISSING
    family: str = "gpt2"  # gpt1 | gpt2 | gpt3 (documentation; behaviour comes from the fields below)
    n_layer: int = MISSING
    d_model: int = MISSING
    n_head: int = MISSING
    d_head: int | None = None  # default d_model // n_head
    d_ff: int | None = None  # default 4 * d_model
    vocab_size: int = MISSING
    seq_len: int = MISSING  # context length (n_ctx): size of the position table
    norm: str = "pre"  # pre (GPT-2/3) | post (GPT-1)
    final_norm: bool = True  # GPT-2/3 add a LayerNorm before the output head
    tied_embeddings: bool = True
    activation: str = "gelu"  # gelu (tanh approximation, as GPT-1/2/3)
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    scaled_residual_init: bool = True  # residual projections std / sqrt(2 n_layer) (GPT-2)
    attention: str = "dense"  # dense | alternating (GPT-3: dense and locally banded layers)
    local_window: int = 256  # band width of the local layers when attention=alternating
    attention_impl: str = "xla"  # xla | cudnn (jax.nn.dot_product_attention implementation)
    vocab_pad_multiple: int = 1  # pad the embedding rows (e.g. 128 on GPUs); counts exclude it
    param_dtype: str = "float32"
    compute_dtype: str = "float32"  # bfloat16 for mixed precision; loss/softmax stay float32
    remat: str = "none"  # none | dots_saveable | full
    scan_layers: bool = False
    # Published figures, for reference and for experiment files (GPT-3 Table 2.1).
    paper_params: int | None = None
    paper_batch_tokens: int | None = None
    paper_lr: float | None = None


@dataclass
class DataConfig:
    name: str = "shakespeare"
    # Built-in corpus names (see research/data/corpus.py) or user paths: files, folders, globs,
    # *.jsonl (text in `text_field`).
    sources: list[str] = field(default_factory=lambda: ["shakespeare"])
    text_field: str = "text"
    cache_dir: str = "data"  # relative paths resolve against the project root
    vocab_size: int = "${model.vocab_size}"  # type: ignore[assignment]
    val_fraction: float = 0.02  # share of documents held out for validation
    split_seed: int = 1234
    chunk_chars: int = 8192  # long texts are cut at blank lines into ~this many chars (documents); 0 = keep whole


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices and the token embedding; not biases, LayerNorm, positions
    clip_norm: float = 1.0
    schedule: str = "cosine"  # cosine | constant | wsd
    warmup_steps: int | None = None  # wins over warmup_fraction when set
    warmup_fraction: float = 0.02
    min_lr_ratio: float = 0.1  # cosine decays to 10% of the peak (GPT-3)
    decay_fraction: float = 0.2  # wsd: last fraction of steps decays linearly


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 16  # global batch, in sequences
    seq_len: int | None = None  # training window; default: the model's context
    microbatches: int = 1  # gradient accumulation inside the jitted step
    # independent sub-batches per (micro)batch, for the CPU's two threads; null: automatic (4 or 2 on the CPU
    # with bf16 compute when each keeps >= 1024 tokens per device, else 1: research/train/step.py auto_streams)
    streams: int | None = None
    # Budget: exactly one of these three.
    steps: int | None = None
    tokens: int | None = None
    tokens_per_param: float | None = None  # tokens = ratio x non-embedding parameters
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 2
    progress: bool = True
    experiment: str = "default"
    run_name: str = "run"
    device_peak_flops: float | None = None  # override the peak table for MFU
    # Bad steps (research/train/guards.py): a step whose loss or gradient norm is NaN/Inf, or whose
    # loss spikes above mean + spike_factor x std of its running statistics, never updates the
    # parameters; the policy says what happens next.
    nan_policy: str = "skip"  # skip (drop the update) | rollback (to the last checkpoint) | stop
    spike_factor: float = 6.0  # 0 disables spike detection
    spike_window: int = 100  # horizon (steps) of the loss EMA; spikes are tested once it has filled
    max_bad_steps: int = 3  # nan_policy=stop: this many consecutive bad steps stop the run
    max_rollbacks: int = 5  # nan_policy=rollback: more rollbacks than this stop the run
    # Resume: a run directory's own checkpoints always win; otherwise start from resume_from (a
    # checkpoints folder or a run directory), which must lie inside the run directory unless
    # allow_external_resume=true.
    resume_from: str | None = None
    allow_external_resume: bool = False
    # Test hooks: poison the steps (1-based, = batch number) listed with NaN, Inf or a 100x loss.
    debug_poison_steps: list[int] = field(default_factory=list)
    debug_poison_kind: str = "nan"  # nan | inf | spike
    debug_step_delay: float = 0.0  # test hook: seconds to sleep after each step (to interrupt a run mid-way)


@dataclass
class MeshConfig:
    name: str = "single"
    data: int = 1
    fsdp: int = 1
    tensor: int = 1  # -1 in one axis fills the remaining devices
    rules: dict[str, Any] = field(default_factory=dict)  # logical axis -> mesh axes overrides


@dataclass
class SweepConfig:
    """What an experiment file (conf/experiment/*.yaml) tells research/sweep.py; unused by single runs."""

    law: str = "kaplan_n"  # the law `make sweep` fits (python -m analysis fit --law)
    ladder: dict[str, Any] = field(default_factory=dict)  # rung name -> {n_layer, d_model, n_head[, d_ff]}
    size: str | None = None  # size ladders: this member's rung
    compute: float | None = None  # IsoFLOP grids: this member's budget C = 6 N D (FLOPs)
    offset: int = 0  # IsoFLOP grids: rungs above (+) or below (-) the one nearest the expected optimum
    optimum_tokens_per_param: float = 20.0  # IsoFLOP grids: D/N at the expected optimum (Chinchilla: ~20)


@dataclass
class PlanConfig:
    """What experiments/plan.py plans for beyond the model, mesh and train budget; unused by runs."""

    devices: int | None = None  # devices to plan for (mesh -1 fills them); null: the mesh's fixed sizes (-1 -> 1)
    device: str | None = "H100"  # peak FLOP/s and memory from research/flops.py's tables; null: no fit / wall time
    device_memory_gb: float | None = None  # GB (1e9 bytes) per device; overrides the table
    memory_fraction: float = 0.75  # usable share: JAX preallocates 75% of a GPU (XLA_PYTHON_CLIENT_MEM_FRACTION)
    mfu: float = 0.4  # assumed model FLOPs utilisation (6N + 12LHQT convention) for the wall time
    fit: str | None = None  # fit.json of `python -m analysis fit ... --law chinchilla`: N_opt, D_opt for the plan


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    train: TrainConfig = MISSING
    mesh: MeshConfig = MISSING
    output: str = "text"  # plan.py: text | json
    sweep: SweepConfig = field(default_factory=SweepConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="optim", name="base_optim", node=OptimConfig)
    cs.store(group="train", name="base_train", node=TrainConfig)
    cs.store(group="mesh", name="base_mesh", node=MeshConfig)
    from research.sweep import register_resolvers  # the ${sweep.*} resolvers experiment files use

    register_resolvers()


# ---------------------------------------------------------------------------------------------
# Derived quantities and validation

_CHOICES = {
    "model.norm": ("pre", "post"),
    "model.activation": ("gelu", "relu"),
    "model.attention": ("dense", "alternating"),
    "model.attention_impl": ("xla", "cudnn"),
    "model.remat": ("none", "dots_saveable", "full"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "optim.schedule": ("cosine", "constant", "wsd"),
    "train.nan_policy": ("skip", "rollback", "stop"),
    "train.debug_poison_kind": ("nan", "inf", "spike"),
}


def d_head(m: ModelConfig) -> int:
    return m.d_head if m.d_head is not None else m.d_model // m.n_head


def d_ff(m: ModelConfig) -> int:
    return m.d_ff if m.d_ff is not None else 4 * m.d_model


def train_seq_len(cfg: Config) -> int:
    return cfg.train.seq_len if cfg.train.seq_len is not None else cfg.model.seq_len


def batch_tokens(cfg: Config) -> int:
    return cfg.train.batch_size * train_seq_len(cfg)


def total_steps(cfg: Config, params_nonembed: int) -> int:
    """Steps from whichever budget is set (steps, tokens, or tokens_per_param x N)."""
    t = cfg.train
    if t.steps is not None:
        return int(t.steps)
    tokens = t.tokens if t.tokens is not None else t.tokens_per_param * params_nonembed
    return max(1, math.ceil(tokens / batch_tokens(cfg))) if tokens >= batch_tokens(cfg) else 0


def warmup_steps(cfg: Config, steps: int) -> int:
    o = cfg.optim
    if o.warmup_steps is not None:
        return int(o.warmup_steps)
    return int(round(o.warmup_fraction * steps))


def to_config(cfg: Any) -> Config:
    """Hydra DictConfig -> typed Config; a missing or mistyped value becomes one clear sentence."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "a setting"
        raise ConfigError(f"{key} is missing or has the wrong type ({type(e).__name__}); set it in conf/ or on the command line.") from e


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config, n_devices: int | None = None) -> None:
    """Raise ConfigError with one sentence for the first impossible setting found."""
    m, t, o, me = cfg.model, cfg.train, cfg.optim, cfg.mesh

    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}; pick one of those.")
    for key in ("n_layer", "d_model", "n_head", "vocab_size", "seq_len"):
        if _get(m, key) <= 0:
            raise ConfigError(f"model.{key}={_get(m, key)} must be a positive integer; set it to one.")
    if m.d_head is None and m.d_model % m.n_head:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_head={m.n_head}; "
            "choose n_head dividing d_model or set model.d_head explicitly."
        )
    if m.d_ff is not None and m.d_ff <= 0:
        raise ConfigError(f"model.d_ff={m.d_ff} must be positive; set it or leave it null for 4 x d_model.")
    if m.vocab_pad_multiple < 1:
        raise ConfigError(f"model.vocab_pad_multiple={m.vocab_pad_multiple} must be at least 1; use 1 for no padding.")
    if m.attention == "alternating" and m.local_window < 1:
        raise ConfigError(f"model.local_window={m.local_window} must be at least 1 with model.attention=alternating.")

    seq = train_seq_len(cfg)
    if seq <= 0:
        raise ConfigError(f"train.seq_len={seq} must be positive; set it or leave it null for the model's context.")
    if seq > m.seq_len:
        raise ConfigError(
            f"train.seq_len={seq} is above the model's context model.seq_len={m.seq_len}; "
            "lower train.seq_len or raise model.seq_len."
        )
    if t.batch_size <= 0:
        raise ConfigError(f"train.batch_size={t.batch_size} must be positive; set a positive global batch.")
    if t.microbatches < 1 or t.batch_size % t.microbatches:
        raise ConfigError(
            f"train.microbatches={t.microbatches} must be a positive divisor of train.batch_size={t.batch_size}; "
            "choose one that divides the batch."
        )
    micro_rows = t.batch_size // t.microbatches
    if t.streams is not None and (t.streams < 1 or micro_rows % t.streams):
        raise ConfigError(
            f"train.streams={t.streams} must be a positive divisor of the {micro_rows} sequences per microbatch "
            "(train.batch_size / train.microbatches); choose one that divides them, or null for automatic."
        )
    budgets = [k for k in ("steps", "tokens", "tokens_per_param") if getattr(t, k) is not None]
    if len(budgets) != 1:
        raise ConfigError(
            f"set exactly one of train.steps, train.tokens, train.tokens_per_param (got {budgets or 'none'}); "
            "null the others with e.g. train.steps=null."
        )
    budget_key = budgets[0]
    if getattr(t, budget_key) <= 0:
        raise ConfigError(f"train.{budget_key}={getattr(t, budget_key)} must be positive; give a positive budget.")
    if t.tokens is not None and t.tokens < batch_tokens(cfg):
        raise ConfigError(
            f"train.tokens={t.tokens} is smaller than one step (batch_size x seq_len = {batch_tokens(cfg)} tokens); "
            "raise train.tokens or shrink the batch."
        )
    for key in ("eval_every", "log_every", "checkpoint_every", "eval_batches", "keep_checkpoints"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key}={getattr(t, key)} must be positive; set it to at least 1.")
    _validate_fault_tolerance(cfg)

    if o.lr <= 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive; set a learning rate such as 3e-4.")
    if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
        raise ConfigError(f"optim.b1={o.b1} and optim.b2={o.b2} must lie in [0, 1); use e.g. 0.9 and 0.95.")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={o.weight_decay} must be non-negative; use 0 to disable it.")
    if o.clip_norm < 0:
        raise ConfigError(f"optim.clip_norm={o.clip_norm} must be non-negative; use 0 to disable clipping.")
    if not 0 <= o.warmup_fraction < 1:
        raise ConfigError(f"optim.warmup_fraction={o.warmup_fraction} must lie in [0, 1); use e.g. 0.02.")
    if o.warmup_steps is not None and o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be non-negative; use 0 for no warmup.")
    if not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1]; GPT-3 uses 0.1.")

    sizes = {"data": me.data, "fsdp": me.fsdp, "tensor": me.tensor}
    if sum(1 for v in sizes.values() if v == -1) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1; fix the others to sizes.")
    for axis, v in sizes.items():
        if v == 0 or v < -1:
            raise ConfigError(f"mesh.{axis}={v} must be a positive size or -1 (the rest of the devices).")
    if n_devices is not None:
        fixed = math.prod(v for v in sizes.values() if v != -1)
        if -1 in sizes.values():
            if n_devices % fixed:
                raise ConfigError(
                    f"mesh sizes {sizes} cannot fill {n_devices} devices ({n_devices} is not divisible by {fixed}); "
                    "change the fixed mesh axes."
                )
        elif fixed != n_devices:
            raise ConfigError(
                f"mesh data x fsdp x tensor = {fixed} but there are {n_devices} devices; "
                "make the product match or set one axis to -1."
            )
        _validate_batch_shards(cfg, n_devices)


def _validate_fault_tolerance(cfg: Config) -> None:
    t, m, d = cfg.train, cfg.model, cfg.data
    if not t.checkpoint_minutes > 0:
        raise ConfigError(
            f"train.checkpoint_minutes={t.checkpoint_minutes} must be positive; use a large value such as 1e9 "
            "to save only every train.checkpoint_every steps."
        )
    if t.spike_factor < 0:
        raise ConfigError(f"train.spike_factor={t.spike_factor} must be non-negative; use 0 to disable spike detection.")
    if t.spike_window < 1:
        raise ConfigError(f"train.spike_window={t.spike_window} must be at least 1; use e.g. 100 steps.")
    if t.max_bad_steps < 1:
        raise ConfigError(f"train.max_bad_steps={t.max_bad_steps} must be at least 1; use e.g. 3.")
    if t.max_rollbacks < 1:
        raise ConfigError(f"train.max_rollbacks={t.max_rollbacks} must be at least 1; use e.g. 5.")
    bad = [s for s in t.debug_poison_steps if not isinstance(s, int) or s < 1]
    if bad:
        raise ConfigError(f"train.debug_poison_steps has {bad}, not positive step numbers; list steps from 1.")
    if t.debug_step_delay < 0:
        raise ConfigError(f"train.debug_step_delay={t.debug_step_delay} must be non-negative; use 0 (the default).")
    if t.device_peak_flops is not None and t.device_peak_flops <= 0:
        raise ConfigError(
            f"train.device_peak_flops={t.device_peak_flops} must be positive; leave it null to use the peak table."
        )
    if isinstance(d.vocab_size, int) and d.vocab_size > m.vocab_size:
        raise ConfigError(
            f"data.vocab_size={d.vocab_size} is above model.vocab_size={m.vocab_size}, so the tokenizer would emit ids "
            "the model cannot embed; set data.vocab_size <= model.vocab_size (it follows model.vocab_size by default)."
        )
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must lie in (0, 1); use e.g. 0.02.")
    if t.resume_from is not None and not str(t.resume_from).strip():
        raise ConfigError("train.resume_from is empty; give a checkpoints folder or run directory, or null.")


def _validate_batch_shards(cfg: Config, n_devices: int) -> None:
    """The global batch must split evenly over the mesh axes the batch is sharded on."""
    from research import sharding  # imports this module

    sizes = sharding.mesh_shape(cfg.mesh, n_devices)
    check_batch_split(cfg.train, sharding.logical_shards(sizes, sharding.make_rules(cfg.mesh.rules), "batch"))


def check_batch_split(t: TrainConfig, shards: int) -> None:
    """The global batch splits evenly over the data shards, the microbatches and (when set) the streams."""
    parts = shards * t.microbatches * (t.streams or 1)
    if t.batch_size % parts:
        streams = f" x {t.streams} streams" if t.streams else ""
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by the {shards} data shards x "
            f"{t.microbatches} microbatches{streams}; pick a multiple of {parts}."
        )
