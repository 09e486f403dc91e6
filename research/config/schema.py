"""The config schema: one dataclass per section of conf/ (model, data, optim, train, mesh, sweep, plan).

Dataclasses only: no Hydra, no project imports. research/config/hydra.py registers them as Hydra
structured configs (so every YAML file under conf/ is checked against them), derived.py computes what
follows from them, and validate.py is the one pass that rejects impossible settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING: Any = "???"  # OmegaConf's marker for a value that must be set (omegaconf.MISSING)

# The allowed values of every choice field, checked by research/config/validate.py.
CHOICES: dict[str, tuple[str, ...]] = {
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


@dataclass
class ModelConfig:
    name: str = MISSING
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
class SlurmDataConfig:
    """data.executor=slurm: the job array that encodes the work units (submitit's parameters)."""

    partition: str | None = None
    timeout_min: int = 120
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    array_parallelism: int = 256  # tasks running at once
    additional: dict[str, Any] = field(default_factory=dict)  # other sbatch settings, e.g. {account: x}


@dataclass
class DataConfig:
    name: str = "shakespeare"
    # Built-in corpus names (research/data/builtin.py), user paths (text, jsonl[.gz|.zst], parquet files,
    # folders, globs, a `datasets` save_to_disk folder), or {source: ..., weight: ..., name: ...} for a
    # weighted mixture (every source weighted, or none).
    sources: list[Any] = field(default_factory=lambda: ["shakespeare"])
    text_field: str = "text"
    cache_dir: str = "data"  # relative paths resolve against the project root
    vocab_size: int = "${model.vocab_size}"  # type: ignore[assignment]
    val_fraction: float = 0.02  # expected share of documents held out (by a hash of each document)
    split_seed: int = 1234  # keys the split hash and the tokenizer's line sample
    chunk_chars: int = 8192  # long texts are cut at blank lines into ~this many chars (documents); 0 = keep whole
    tokenizer: str | None = None  # an existing SentencePiece .model or Hugging Face tokenizer.json; null: train one
    eos_token: str | None = None  # the document separator of a tokenizer.json, when not one of the usual names
    on_bad_record: str = "skip"  # skip (count and report) | fail
    workers: int | None = None  # encoding processes; null: every core
    executor: str = "local"  # local (a process pool) | slurm | submitit_local (submitit's local executor)
    unit_mb: int = 16  # work units: files larger than this are cut into byte ranges of about this size
    tokenizer_sample_mb: int = 1024  # input read (a seeded subset of units) to sample the tokenizer's lines
    slurm: SlurmDataConfig = field(default_factory=SlurmDataConfig)


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
    # gradient accumulation inside the jitted step: a count, or auto (the fewest that fit the device's memory,
    # then more remat; research/memory_fit.py). Any: OmegaConf 2.3 has no int | str field
    microbatches: Any = 1
    memory_budget_gb: float | None = None  # auto's usable memory per device (GB); null: the device's own limit
    # independent sub-batches per (micro)batch, for the CPU's two threads; null: automatic (research/cpu/streams.py)
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
    """What an experiment file (conf/experiment/*.yaml) tells research/sweep/; unused by single runs."""

    law: str = "kaplan_n"  # the law `make sweep` fits (python -m analysis fit --law)
    ladder: dict[str, Any] = field(default_factory=dict)  # rung name -> {n_layer, d_model, n_head[, d_ff]}
    size: str | None = None  # size ladders: this member's rung
    compute: float | None = None  # IsoFLOP grids: this member's budget C = 6 N D (FLOPs)
    offset: int = 0  # IsoFLOP grids: rungs above (+) or below (-) the one nearest the expected optimum
    optimum_tokens_per_param: float = 20.0  # IsoFLOP grids: D/N at the expected optimum (Chinchilla: ~20)
    # Seeds every member runs with (hydra.sweeper.params: train.seed: ${sweep.csv:${sweep.seeds}}); with more than
    # one, run names carry ${sweep.seed_tag:} and the fit averages each configuration's seeds.
    seeds: list[int] = field(default_factory=lambda: [0])
    fit_args: str = ""  # extra arguments of `make sweep`'s fit (python -m analysis fit), e.g. --holdout-largest 1


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
