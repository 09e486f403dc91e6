"""Text clean-up and chunking shared by every source."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_GUTENBERG_START = re.compile(
    r"^.*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT!).*$", re.M | re.I
)
_GUTENBERG_END = re.compile(
    r"^.*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.M | re.I
)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header/licence (everything up to the START marker line) and
    footer (from the END marker line on). Text without the markers is returned unchanged."""
    return cut_gutenberg_footer(strip_gutenberg_header(text))[0]


def strip_gutenberg_header(text: str) -> str:
    start = _GUTENBERG_START.search(text)
    return text[start.end() :] if start else text


def cut_gutenberg_footer(text: str) -> tuple[str, bool]:
    """The text before a Project Gutenberg END marker line, and whether there was one."""
    end = _GUTENBERG_END.search(text)
    return (text[: end.start()], True) if end else (text, False)


def normalize_text(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, stripped ends."""
    # Each rewrite only when its pattern occurs: the substring tests are far cheaper than the regexes.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text:
        text = re.sub(r"[ \t]+\n", "\n", text)
    if "\n\n\n" in text:
        text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _pack(pieces: Iterable[str], sep: str, max_chars: int) -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for piece in pieces:
        if buf and size + len(sep) + len(piece) > max_chars:
            yield sep.join(buf)
            buf, size = [], 0
        buf.append(piece)
        size += len(piece) + (len(sep) if len(buf) > 1 else 0)
    if buf:
        yield sep.join(buf)


def split_document(text: str, max_chars: int) -> list[str]:
    """Cut a text into pieces of at most ~max_chars at blank lines (then at newlines for one
    over-long paragraph). max_chars <= 0 keeps the text whole."""
    text = text.strip()
    if not text:
        return []
    if max_chars <= 0 or len(text) <= max_chars:
        return [text]

    def paragraphs() -> Iterator[str]:
        for para in text.split("\n\n"):
            if len(para) > max_chars:
                yield from _pack(para.split("\n"), "\n", max_chars)
            elif para.strip():
                yield para

    return [c for c in _pack(paragraphs(), "\n\n", max_chars) if c.strip()]
