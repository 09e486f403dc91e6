"""Raw texts -> documents, and the train/validation split by a hash of each document.

Documents are the unit of the split: each raw text is normalized and cut into documents of about
`chunk_chars` characters at blank lines. A document goes to validation when a keyed hash of its text
(key: data.split_seed) falls below data.val_fraction, so the split streams, is the same on every machine,
does not move when documents are added, and puts duplicate documents on the same side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from research.data.text import normalize_text, split_document

_SCALE = float(2**64)


def documents(raw_texts: Iterable[str], chunk_chars: int) -> Iterator[str]:
    for raw in raw_texts:
        yield from split_document(normalize_text(raw), chunk_chars)


def split_key(split_seed: int) -> bytes:
    return int(split_seed).to_bytes(8, "little", signed=True)


def hash_unit(text: str, key: bytes) -> float:
    """A uniform number in [0, 1) from the document's text and the split key."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") / _SCALE


def is_validation(text: str, key: bytes, val_fraction: float) -> bool:
    return hash_unit(text, key) < val_fraction
