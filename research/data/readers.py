"""Streaming readers: a work unit -> raw texts, one at a time, never the whole input in memory.

A work unit is what one worker prepares into one shard: a whole file, a byte range of a big uncompressed
text or jsonl file (cut at line ends), one parquet row group, one Arrow file of a `datasets` folder, or a
built-in corpus. Bad records (invalid JSON, a missing or non-string text field, a null row) are skipped
and counted, or stop the preparation with data.on_bad_record=fail.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from research.data.builtin import BUILTINS, DEDUP_MIN_CHARS, DEDUPED_BUILTINS, fetch_builtin
from research.data.sources import Source, file_format
from research.data.text import cut_gutenberg_footer, strip_gutenberg_header
from research.errors import ConfigError

TEXT_WINDOW_CHARS = 4 << 20  # a long text file is read in windows of ~4M characters, cut at blank lines
MAX_UNDECODABLE_SHARE = 0.01  # more undecodable bytes than this and a text file is refused
_FIRST_BAD = 5  # bad-record locations kept for the summary


@dataclass(frozen=True)
class WorkUnit:
    index: int
    source: int  # index into the resolved sources
    fmt: str  # builtin | text | jsonl | parquet | arrow
    path: str = ""
    start: int = 0  # byte range [start, end) of a big uncompressed file; end -1: to the end
    end: int = -1
    part: int = -1  # parquet row group
    size: int = 0  # bytes (estimated for compressed inputs), for progress and ETA

    def where(self) -> str:
        if self.part >= 0:
            return f"{self.path} row group {self.part}"
        if self.end >= 0:
            return f"{self.path} bytes {self.start}-{self.end}"
        return self.path or self.fmt


@dataclass
class BadRecords:
    """Counts skipped records and keeps the first few locations; fail=True raises on the first."""

    fail: bool = False
    count: int = 0
    first: list[str] = field(default_factory=list)
    undecodable_bytes: int = 0

    def add(self, location: str, why: str) -> None:
        if self.fail:
            raise ConfigError(
                f"data.on_bad_record=fail: {location}: {why}; fix that record or set data.on_bad_record=skip "
                "to skip and count bad records."
            )
        self.count += 1
        if len(self.first) < _FIRST_BAD:
            self.first.append(f"{location}: {why}")


def _compressed(path: str) -> bool:
    return path.lower().endswith((".gz", ".zst"))


def open_binary(path: str) -> IO[bytes]:
    """The file's bytes, decompressed on the fly for .gz and .zst."""
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if low.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def plan_units(sources: list[Source], unit_bytes: int, raw_dir: Path) -> list[WorkUnit]:
    """Every source cut into work units, in source order (which fixes the order of the shards)."""
    units: list[WorkUnit] = []
    for si, src in enumerate(sources):
        if src.kind == "builtin":
            size = fetch_builtin(src.spec, raw_dir).stat().st_size
            units.append(WorkUnit(len(units), si, "builtin", src.spec, size=size))
            continue
        for path in src.files:
            fmt = "arrow" if src.kind == "hf_dataset" else file_format(path)
            for start, end, part, size in _parts(path, fmt, unit_bytes):
                units.append(WorkUnit(len(units), si, fmt, str(path), start, end, part, size))
    return units


def _parts(path: Path, fmt: str, unit_bytes: int) -> list[tuple[int, int, int, int]]:
    size = path.stat().st_size
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        return [(0, -1, g, meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups)]
    if fmt == "arrow" or _compressed(str(path)) or size <= unit_bytes:
        return [(0, -1, -1, size * (4 if _compressed(str(path)) else 1))]
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + unit_bytes < size:
            f.seek(cuts[-1] + unit_bytes)
            f.readline()  # to the end of the line the cut falls in
            if f.tell() >= size:
                break
            cuts.append(f.tell())
    cuts.append(size)
    return [(a, b, -1, b - a) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _lines(unit: WorkUnit) -> Iterator[bytes]:
    with open_binary(unit.path) as f:
        if unit.end < 0:
            yield from f
            return
        f.seek(unit.start)
        pos = unit.start
        while pos < unit.end:
            line = f.readline()
            if not line:
                return
            pos += len(line)
            yield line


def read_jsonl(unit: WorkUnit, text_field: str, bad: BadRecords) -> Iterator[str]:
    for lineno, line in enumerate(_lines(unit), 1):
        if not line.strip():
            continue
        where = f"{unit.where()} line {lineno}"
        try:
            rec = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            bad.add(where, f"not valid JSON ({getattr(e, 'msg', None) or e})")
            continue
        text = rec.get(text_field) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            why = "has no" if not isinstance(rec, dict) or text_field not in rec else "has a non-string"
            bad.add(where, f"{why} text field {text_field!r} (data.text_field)")
            continue
        yield text


def read_text(unit: WorkUnit, bad: BadRecords) -> Iterator[str]:
    """Windows of a text file cut at blank lines, Project Gutenberg header and footer removed."""
    buf: list[bytes] = []
    size, seen_bytes, whole = 0, 0, unit.end < 0 or unit.start == 0
    with open_binary(unit.path) as f:
        f.seek(max(unit.start, 0))
        if b"\x00" in f.read(8192):
            raise ConfigError(
                f"data.sources: {unit.path} looks binary (NUL bytes near its start), not text; remove it from the "
                "folder or glob, or name only the text files."
            )
    for line in _lines(unit):
        buf.append(line)
        size += len(line)
        if size >= TEXT_WINDOW_CHARS and not line.strip():
            text, ended = _decode_window(b"".join(buf), unit, bad, first=whole)
            seen_bytes += size
            whole, buf, size = False, [], 0
            yield text
            if ended:
                return
    if buf:
        seen_bytes += size
        yield _decode_window(b"".join(buf), unit, bad, first=whole)[0]
    if seen_bytes and bad.undecodable_bytes > MAX_UNDECODABLE_SHARE * seen_bytes:
        raise ConfigError(
            f"data.sources: {unit.path} is not UTF-8 text ({bad.undecodable_bytes:,} of {seen_bytes:,} bytes do not "
            "decode); convert it (e.g. iconv -f latin1 -t utf-8) or remove it."
        )


def _decode_window(raw: bytes, unit: WorkUnit, bad: BadRecords, first: bool) -> tuple[str, bool]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        bad.undecodable_bytes += text.count("\ufffd") - raw.count("\ufffd".encode())
    return cut_gutenberg_footer(strip_gutenberg_header(text) if first else text)


def read_parquet(unit: WorkUnit, text_field: str, bad: BadRecords) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(unit.path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ConfigError(
            f"data.text_field={text_field!r} is not a column of {unit.path} (its columns: {', '.join(names)}); set "
            "data.text_field to the column that holds the text."
        )
    row = 0
    for batch in pf.iter_batches(row_groups=[unit.part], columns=[text_field], batch_size=1024):
        yield from _column_texts(batch.column(0).to_pylist(), f"{unit.where()} row", row, bad)
        row += batch.num_rows


def read_arrow(unit: WorkUnit, text_field: str, bad: BadRecords) -> Iterator[str]:
    """One Arrow file of a `datasets` folder (save_to_disk writes the streaming IPC format)."""
    import pyarrow as pa

    with pa.memory_map(unit.path) as mm:
        try:
            reader = pa.ipc.open_stream(mm)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(mm)
        names = reader.schema.names
        if text_field not in names:
            raise ConfigError(
                f"data.text_field={text_field!r} is not a column of the dataset at {Path(unit.path).parent} (its "
                f"columns: {', '.join(names)}); set data.text_field to the column that holds the text."
            )
        batches = reader if isinstance(reader, pa.ipc.RecordBatchStreamReader) else _file_batches(reader)
        row = 0
        for batch in batches:
            texts = batch.column(names.index(text_field)).to_pylist()
            yield from _column_texts(texts, f"{unit.where()} row", row, bad)
            row += batch.num_rows


def _file_batches(reader) -> Iterator:
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def _column_texts(values: list, where: str, first_row: int, bad: BadRecords) -> Iterator[str]:
    for k, value in enumerate(values):
        if isinstance(value, str):
            yield value
        else:
            bad.add(f"{where} {first_row + k}", "the text is null or not a string")


def read_builtin(unit: WorkUnit, sources: list[Source], raw_dir: Path) -> Iterator[str]:
    docs = BUILTINS[unit.path].reader(fetch_builtin(unit.path, raw_dir))
    if unit.path not in DEDUPED_BUILTINS:
        yield from docs
        return
    # Lines already seen in the corpus's other built-in sources (or earlier in this one) are dropped.
    seen: set[str] = set()
    for other in sources:
        if other.kind == "builtin" and other.spec not in DEDUPED_BUILTINS:
            for d in BUILTINS[other.spec].reader(fetch_builtin(other.spec, raw_dir)):
                seen.update(k for line in d.split("\n") if len(k := line.strip()) >= DEDUP_MIN_CHARS)
    for d in docs:
        yield _dedup_lines(d, seen)


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


def read_unit(unit: WorkUnit, sources: list[Source], text_field: str, raw_dir: Path, bad: BadRecords) -> Iterator[str]:
    """The raw texts of one work unit, in order."""
    if unit.fmt == "builtin":
        return read_builtin(unit, sources, raw_dir)
    if unit.fmt == "jsonl":
        return read_jsonl(unit, text_field, bad)
    if unit.fmt == "parquet":
        return read_parquet(unit, text_field, bad)
    if unit.fmt == "arrow":
        return read_arrow(unit, text_field, bad)
    return read_text(unit, bad)
