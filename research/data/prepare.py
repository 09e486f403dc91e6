"""prepare(cfg.data): sources -> work units -> tokenizer -> token shards -> manifest, resumable and parallel.

Stages: plan the work units (file names and sizes only); the tokenizer (the given one, or SentencePiece
trained on a seeded bottom-k sample of lines from a seeded subset of units); encode every unit into its
shards on a pool of workers or a job array (research/data/executors.py); then the manifest and meta.json.
The dataset folder is the working folder: a unit finished before a crash is kept and the rerun encodes
only the rest, giving the same bytes as an uninterrupted run. meta.json, written last, marks it complete.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from research.config.schema import DataConfig
from research.data.dataset import META, Dataset, token_dtype
from research.data.executors import default_workers, run_tasks
from research.data.finish import write_manifest_and_meta
from research.data.readers import WorkUnit, plan_units
from research.data.sample import LineSample, sample_unit
from research.data.settings import dataset_dir, tokenizer_file
from research.data.shards import SHARDS, UnitJob, encode_unit, read_marker
from research.data.sources import Source
from research.data.tokenizer import MAX_TRAIN_CHARS, MAX_TRAIN_LINES, load_tokenizer, train_sentencepiece
from research.errors import ConfigError

log = logging.getLogger("research.data")
_BYTES_PER_WORKER = 16 << 20


def _say(verbose: bool, msg: str) -> None:
    log.info(msg)
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def _complete(d: Path, fp: str) -> bool:
    try:
        return json.loads((d / META).read_text())["fingerprint"] == fp
    except (OSError, ValueError, KeyError):
        return False


def _loaded(d: Path, sources: list[Source]) -> Dataset:
    ds = Dataset.load(d)
    if all(s.weight is not None for s in sources):
        total = sum(s.weight for s in sources)  # type: ignore[misc]
        ds.weights = [s.weight / total for s in sources]  # type: ignore[operator]
    return ds


@contextmanager
def _locked(root: Path, name: str):
    """One preparation of a dataset at a time (others wait, then find it complete)."""
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_partial(final: Path, root: Path) -> None:
    """Temporary files of a killed preparation (ours hold the lock, so none is live)."""
    for p in list((final / SHARDS).glob("*.tmp-*")) + list(final.glob(".*.tmp")):
        p.unlink(missing_ok=True)
    for old in root.glob(f".tmp-{final.name.rsplit('-', 1)[0]}-*"):  # the single-folder format's leftovers
        shutil.rmtree(old, ignore_errors=True)


def prepare(cfg: DataConfig, *, verbose: bool = True) -> Dataset:
    """Prepare (or reuse) the token shards for cfg (a DataConfig or the `data` node of a composed Hydra
    config); idempotent, resumable after a crash, and safe to call concurrently."""
    final, fp, settings, sources = dataset_dir(cfg)
    if _complete(final, fp):
        return _loaded(final, sources)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, final.name):
        if not _complete(final, fp):
            _prepare(cfg, final, fp, settings, sources, verbose)
    return _loaded(final, sources)


def _prepare(cfg: DataConfig, final: Path, fp: str, settings: dict, sources: list[Source], verbose: bool) -> None:
    t0 = time.perf_counter()
    root = final.parent
    final.mkdir(exist_ok=True)
    _clean_partial(final, root)
    stages: dict[str, float] = {}
    _say(verbose, f"[data] preparing {final.name} from {', '.join(s.name for s in sources)}")
    units = plan_units(sources, int(cfg.unit_mb) << 20, root / "raw")
    _write_json(final / "units.json", [dataclasses.asdict(u) for u in units])
    stages["plan"] = time.perf_counter() - t0
    # Every core by default, but a small corpus is not worth starting processes for (~1 s each).
    auto = min(default_workers(), max(1, sum(u.size for u in units) // _BYTES_PER_WORKER))
    workers = int(cfg.workers or auto)
    run = functools.partial(
        run_tasks,
        executor=cfg.executor,
        workers=workers,
        folder=final / "jobs",
        slurm=_plain(cfg.slurm),
    )
    base = UnitJob(
        dataset_dir=str(final),
        unit=units[0],
        sources=tuple(sources),
        tokenizer="",
        eos_token=cfg.eos_token,
        dtype="",
        text_field=cfg.text_field,
        chunk_chars=int(cfg.chunk_chars),
        split_seed=int(cfg.split_seed),
        val_fraction=float(cfg.val_fraction),
        on_bad_record=cfg.on_bad_record,
        raw_dir=str(root / "raw"),
    )
    tok_path = _tokenizer(cfg, final, units, base, run, stages, verbose)
    tok = load_tokenizer(tok_path, eos_token=cfg.eos_token)
    base = dataclasses.replace(base, tokenizer=str(tok_path), dtype=token_dtype(tok.vocab_size).name)
    _encode_all([dataclasses.replace(base, unit=u) for u in units], final, run, stages, workers, verbose)
    t = time.perf_counter()
    meta = write_manifest_and_meta(cfg, final, fp, settings, sources, units, tok, stages)
    stages["finish"] = time.perf_counter() - t
    shutil.rmtree(final / "jobs", ignore_errors=True)
    ds = Dataset.load(final)
    _say(
        verbose,
        f"[data] ready in {time.perf_counter() - t0:.1f} s: {ds.n_train_tokens:,} train and {ds.n_val_tokens:,} "
        f"val tokens in {len(units)} units, {ds.bytes_per_token_val:.3f} bytes/token (val)"
        + (f"; {meta['bad_records']['count']:,} bad records skipped" if meta["bad_records"]["count"] else ""),
    )


def _plain(node) -> dict:
    """data.slurm as a plain dict (a dataclass, an OmegaConf node or a dict)."""
    if node is None:
        return {}
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ValueError:
        return dict(node)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _sampled_units(units: list[WorkUnit], budget_bytes: int, seed: int) -> list[WorkUnit]:
    """A seeded subset of units holding about budget_bytes of input (all of them for a smaller corpus)."""
    key = int(seed).to_bytes(8, "little", signed=True)
    order = sorted(units, key=lambda u: hashlib.blake2b(str(u.index).encode(), digest_size=8, key=key).digest())
    chosen, total = [], 0
    for u in order:
        if total >= budget_bytes:
            break
        chosen.append(u)
        total += u.size
    return sorted(chosen, key=lambda u: u.index)


def _tokenizer(cfg, final: Path, units, base: UnitJob, run, stages: dict, verbose: bool) -> Path:
    given = tokenizer_file(cfg)
    if given is not None:
        dest = final / ("tokenizer.json" if given.suffix == ".json" else "tokenizer.model")
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(given, tmp)
            os.replace(tmp, dest)
        return dest
    dest = final / "tokenizer.model"
    if dest.exists():  # trained before a crash (written atomically)
        return dest
    t = time.perf_counter()
    chosen = _sampled_units(units, int(cfg.tokenizer_sample_mb) << 20, int(cfg.split_seed))
    _say(verbose, f"[data] sampling tokenizer lines from {len(chosen)} of {len(units)} units")
    sample = LineSample(MAX_TRAIN_LINES, int(cfg.split_seed))
    task = functools.partial(sample_unit, k=MAX_TRAIN_LINES, seed=int(cfg.split_seed))
    for items in run(task, [dataclasses.replace(base, unit=u) for u in chosen]):
        sample.merge(items)
    stages["sample"] = time.perf_counter() - t
    if not len(sample):
        specs = ", ".join(repr(s.spec) for s in base.sources)
        raise ConfigError(
            f"data.sources: {specs} contains no text to train the tokenizer on (once bad records are skipped); "
            "point it at non-empty text or check data.text_field."
        )
    t = time.perf_counter()
    train_sentencepiece(sample.lines(MAX_TRAIN_CHARS), int(cfg.vocab_size), dest, seed=int(cfg.split_seed))
    stages["tokenizer"] = time.perf_counter() - t
    _say(verbose, f"[data] tokenizer trained ({int(cfg.vocab_size)} pieces, {len(sample):,} lines)")
    return dest


def _has_counts(final: Path, index: int) -> bool:
    return (final / SHARDS / f"unit-{index:05d}.counts.npy").exists()


def _encode_all(jobs: list[UnitJob], final: Path, run, stages: dict, workers: int, verbose: bool) -> None:
    t = time.perf_counter()
    pending = [j for j in jobs if read_marker(final, j.unit.index) is None or not _has_counts(final, j.unit.index)]
    if len(pending) < len(jobs):
        _say(verbose, f"[data] {len(jobs) - len(pending)} of {len(jobs)} units already encoded; encoding the rest")
    bar = tqdm(
        total=sum(j.unit.size for j in pending),
        unit="B",
        unit_scale=True,
        desc=f"[data] encode ({min(workers, max(1, len(pending)))} workers)",
        disable=not verbose or not pending,
        file=sys.stderr,
        mininterval=1.0,
    )
    tokens = 0

    def done(i: int, rec: dict) -> None:
        nonlocal tokens
        tokens += rec["train"]["tokens"] + rec["val"]["tokens"]
        bar.update(pending[i].unit.size)
        bar.set_postfix({"tok/s": f"{tokens / max(time.perf_counter() - t, 1e-9):,.0f}"}, refresh=False)

    try:
        run(encode_unit, pending, on_done=done)
    finally:
        bar.close()
    stages["encode"] = time.perf_counter() - t
