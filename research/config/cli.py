"""The command line, checked before Hydra composes: an unknown config name or a misspelt setting gets one
sentence with the closest name (Hydra's own errors are several lines and a hint).

The names come from the conf/ tree (config groups and their files) and the schema's fields.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import fields
from pathlib import Path

from research.config.schema import DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_SCHEMAS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "mesh": MeshConfig}


def check_cli(argv: list[str], conf_dir: Path) -> str | None:
    """The message for the first unknown config name or misspelt setting on the command line, else None."""
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        raw_key, value = arg.split("=", 1)
        key = raw_key.lstrip("+~")
        if key.startswith("hydra") or "/" in key or "@" in key:
            continue
        if key in groups:
            if "(" in value or any(ch in value for ch in "*?[]{}$"):
                continue  # a sweep function or interpolation: Hydra's business
            options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
            for v in (x.strip() for x in value.split(",")):
                if v and v not in options:
                    close = difflib.get_close_matches(v, options, n=1)
                    hint = f"did you mean {close[0]}? " if close else ""
                    return f"{key}={v} is not a config in conf/{key}; {hint}choose one of {', '.join(options)}."
        elif "." in key and not raw_key.startswith("+"):
            group, name = key.split(".")[:2]
            schema = _SCHEMAS.get(group)
            if schema is None:
                continue
            names = [f.name for f in fields(schema)]
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {group}.{close[0]}?)" if close else ""
                return (
                    f"{group}.{name} is not a setting of {group}{hint}; fix the name, or add a new key with +{key}=..."
                )
    return None


def cli_or_exit(argv: list[str] | None = None, conf_dir: Path | None = None) -> None:
    """For entry points: print the one-sentence error and exit 2 before Hydra runs."""
    conf_dir = conf_dir or CONF_DIR
    message = check_cli(sys.argv[1:] if argv is None else argv, conf_dir)
    if message:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
