"""`python -m research.data [OVERRIDES] [--json] [--bench]`: prepare a dataset and print its summary.

Overrides are Hydra's, with the same keys as a training run:
    python -m research.data                                   # the default corpus (`make data`)
    python -m research.data data=books
    python -m research.data data.sources=[/corpora/owt/*.jsonl.zst] data.name=owt data.vocab_size=32768
    python -m research.data data.name=owt2 data.sources=[...] data.tokenizer=/models/gpt2/tokenizer.json
    python -m research.data data=books data.executor=slurm data.slurm.partition=cpu   # a SLURM job array
--json prints meta.json instead of the summary; --bench also times the train loader.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from research.config.cli import check_cli
from research.config.hydra import CONF_DIR, compose, to_config
from research.data.loader import TokenLoader
from research.data.prepare import prepare
from research.errors import ConfigError


def _bench(ds) -> None:
    logging.getLogger("research.data").setLevel(logging.ERROR)  # the timing loop may pass an epoch
    for seq_len, batch in ((128, 16), (1024, 64)):
        it = TokenLoader(ds.train_tokens(), seq_len=seq_len, global_batch=batch, seed=0)
        next(it)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 2.0:
            n += next(it).size
        print(f"  loader       seq_len {seq_len} batch {batch}: {n / (time.perf_counter() - t0):,.0f} tokens/s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    flags = {a for a in argv if a.startswith("--")}
    overrides = [a for a in argv if not a.startswith("--")]
    unknown = flags - {"--json", "--bench"}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if unknown:
            raise ConfigError(
                f"{sorted(unknown)[0]} is not an option of python -m research.data (--json, --bench); settings "
                "are Hydra overrides such as data.sources=[...] data.cache_dir=... data.vocab_size=..."
            )
        bad = [a for a in overrides if "=" not in a]
        if bad:
            raise ConfigError(f"{bad[0]!r} is not an override; write key=value, e.g. data.sources=[{bad[0]}].")
        message = check_cli(overrides, CONF_DIR)
        if message:
            raise ConfigError(message)
        ds = prepare(to_config(compose(overrides)).data, verbose="--json" not in flags)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:  # a malformed override: Hydra's first line says why
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(ds.meta, indent=2) if "--json" in flags else ds.summary())
    if "--bench" in flags:
        _bench(ds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
