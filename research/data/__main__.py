"""`python -m research.data [--name shakespeare] [--vocab-size 512] ...`: prepare a dataset and
print its summary (documents, bytes, tokens per split, bytes/token, unigram entropy).

--name picks conf/data/<name>.yaml when it exists (its sources and settings), else a built-in
corpus of that name; --sources overrides the sources. Used by `make data`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from omegaconf import OmegaConf

from research.config.schema import DataConfig
from research.data.corpus import BUILTINS, PROJECT_ROOT
from research.data.loader import TokenLoader
from research.data.tokens import prepare
from research.errors import ConfigError


def data_config(name: str, sources: list[str] | None, vocab_size: int, **overrides) -> DataConfig:
    base = OmegaConf.structured(DataConfig)
    yaml = PROJECT_ROOT / "conf" / "data" / f"{name}.yaml"
    if yaml.exists():
        loaded = OmegaConf.load(yaml)
        loaded.pop("defaults", None)
        base = OmegaConf.merge(base, loaded)
    elif sources is None and name not in BUILTINS:
        raise ConfigError(
            f"data.name={name!r} is neither conf/data/{name}.yaml nor a built-in corpus ({', '.join(BUILTINS)}); "
            "pass --sources or pick one of those."
        )
    else:
        base.sources = [name]
    base.name = name
    if sources is not None:
        base.sources = sources
    base.vocab_size = vocab_size
    for k, v in overrides.items():
        if v is not None:
            setattr(base, k, v)
    return OmegaConf.to_object(base)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.data", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="shakespeare", help="conf/data/<name>.yaml or a built-in corpus")
    p.add_argument("--sources", nargs="+", help="built-in names, files, folders, globs, *.jsonl")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--split-seed", type=int, default=None)
    p.add_argument("--chunk-chars", type=int, default=None)
    p.add_argument("--text-field", default=None)
    p.add_argument("--bench", action="store_true", help="also time the train loader (tokens/s)")
    p.add_argument("--json", action="store_true", help="print meta.json instead of the summary")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = data_config(
            args.name,
            args.sources,
            args.vocab_size,
            cache_dir=args.cache_dir,
            val_fraction=args.val_fraction,
            split_seed=args.split_seed,
            chunk_chars=args.chunk_chars,
            text_field=args.text_field,
        )
        ds = prepare(cfg, verbose=not args.json)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(ds.meta, indent=2) if args.json else ds.summary())
    if args.bench:
        logging.getLogger("research.data").setLevel(logging.ERROR)  # the timing loop may pass an epoch
        for seq_len, batch in ((128, 16), (1024, 64)):
            it = TokenLoader(ds.train_tokens(), seq_len=seq_len, global_batch=batch, seed=0)
            next(it)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 2.0:
                n += next(it).size
            print(f"  loader       seq_len {seq_len} batch {batch}: {n / (time.perf_counter() - t0):,.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
