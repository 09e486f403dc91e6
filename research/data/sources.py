"""Entries of `data.sources` -> Source: what kind of input, its files, its name and mixture weight.

An entry is a built-in corpus name (research/data/builtin.py), a path (a text file, a folder, a glob;
*.txt, *.jsonl[.gz|.zst], *.txt.gz|.zst, *.parquet, or a Hugging Face `datasets` folder made by
`save_to_disk`), or a mapping {source: <that>, weight: <float>, name: <label>}. Nothing is read here
but file names and sizes, so resolving is cheap for any corpus size.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.data.builtin import BUILTINS
from research.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


@dataclass
class Source:
    spec: str  # the path or name as written in data.sources
    kind: str  # builtin | files | hf_dataset
    name: str  # label in summaries, per-source validation rows and results.json
    files: list[Path] = field(default_factory=list)
    weight: float | None = None  # mixture weight (null: natural proportions)

    def fingerprint(self) -> dict:
        """What the prepared tokens depend on: the pinned distribution, or every file's path, size and mtime."""
        if self.kind == "builtin":
            b = BUILTINS[self.spec]
            return {"builtin": b.name, "requirement": b.requirement, "sha256": b.sha256}
        return {"spec": self.spec, "files": [[str(p), (st := p.stat()).st_size, st.st_mtime_ns] for p in self.files]}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def fix_hint() -> str:
    return (
        "give an existing text, jsonl(.gz/.zst) or parquet file, a folder or glob of them, a `datasets` folder "
        f"saved with save_to_disk, or a built-in corpus ({', '.join(BUILTINS)})"
    )


def file_format(path: Path) -> str:
    """text | jsonl | parquet, from the file name."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "text"


def _resolve_path(spec: str) -> Path | None:
    p = Path(spec).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / p).exists():
            return (base / p).resolve()
    return None


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and (path / "state.json").exists() and (path / "dataset_info.json").exists()


def hf_arrow_files(path: Path) -> list[Path]:
    """The Arrow files a `datasets.Dataset.save_to_disk` folder lists in its state.json, in order."""
    state = json.loads((path / "state.json").read_text())
    files = [path / f["filename"] for f in state.get("_data_files", [])]
    if not files or not all(f.exists() for f in files):
        raise ConfigError(f"data.sources: {path} has a state.json that lists no readable Arrow files; re-save it.")
    return files


def _files_of(spec: str) -> tuple[str, list[Path]]:
    if any(ch in spec for ch in "*?["):
        pattern = str(Path(spec).expanduser())
        if not Path(pattern).is_absolute() and not glob.glob(pattern, recursive=True):
            pattern = str(PROJECT_ROOT / pattern)
        files = sorted(Path(f).resolve() for f in glob.glob(pattern, recursive=True) if Path(f).is_file())
        if not files:
            raise ConfigError(f"data.sources: the glob {spec!r} matches no files; {fix_hint()}.")
        return "files", files
    path = _resolve_path(spec)
    if path is None:
        raise ConfigError(
            f"data.sources: {spec!r} does not exist (looked in {Path.cwd()} and {PROJECT_ROOT}); {fix_hint()}."
        )
    if _is_hf_dataset(path):
        return "hf_dataset", hf_arrow_files(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(KNOWN_SUFFIXES))
        if not files:
            raise ConfigError(
                f"data.sources: the folder {spec!r} holds no {', '.join(KNOWN_SUFFIXES)} files; {fix_hint()}."
            )
        return "files", files
    return "files", [path]


def _label(spec: str) -> str:
    if spec in BUILTINS:
        return spec
    stem = Path(spec.split("*")[0].rstrip("/") or spec).name or "source"
    for suffix in sorted(KNOWN_SUFFIXES, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)] or stem
    return stem


def _entry(entry: Any) -> tuple[str, float | None, str | None]:
    """(spec, weight, name) of one entry: a string, or a mapping with `source` and optional weight and name."""
    if isinstance(entry, str):
        return entry, None, None
    if hasattr(entry, "items"):
        known = {"source", "weight", "name"}
        extra = set(entry) - known
        if "source" not in entry or extra:
            raise ConfigError(
                f"data.sources entry {dict(entry)!r} needs the key `source` (and optionally `weight`, `name`); "
                f"{'unknown key(s) ' + ', '.join(sorted(map(str, extra))) if extra else 'source is missing'}."
            )
        weight = entry.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0):
            raise ConfigError(f"data.sources: the weight of {entry['source']!r} is {weight!r}; give a positive number.")
        return str(entry["source"]), None if weight is None else float(weight), entry.get("name")
    raise ConfigError(
        f"data.sources has an entry {entry!r} that is neither a path or name nor a mapping; {fix_hint()}."
    )


def resolve_source(entry: Any) -> Source:
    """Classify one entry of data.sources and list its files; ConfigError if it names nothing readable."""
    spec, weight, name = _entry(entry)
    if not spec.strip():
        raise ConfigError(f"data.sources has an empty entry {spec!r}; {fix_hint()}.")
    if spec in BUILTINS:
        return Source(spec, "builtin", name or spec, weight=weight)
    kind, files = _files_of(spec)
    return Source(spec, kind, name or _label(spec), files, weight)


def resolve_sources(sources: Iterable[Any] | str) -> list[Source]:
    """Every entry resolved; names made unique; weights all given or none."""
    if isinstance(sources, str):
        sources = [sources]
    out = [resolve_source(s) for s in list(sources)]
    if not out:
        raise ConfigError(f"data.sources is empty; {fix_hint()}.")
    weighted = [s.weight is not None for s in out]
    if any(weighted) and not all(weighted):
        missing = ", ".join(s.name for s in out if s.weight is None)
        raise ConfigError(
            f"data.sources gives weights to some sources but not to {missing}; give every source a weight "
            "(a mixture) or none (natural proportions)."
        )
    seen: dict[str, int] = {}
    for s in out:
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}_{seen[s.name]}"
        else:
            seen[s.name] = 0
    return out
