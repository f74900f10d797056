"""An order-independent digest of a keyspace, so two nodes can be compared in one call.

Each key contributes a 64-bit BLAKE2b hash of (key, type, value or elements,
expiry); the digest is their sum modulo 2**64, so it does not depend on the
order keys are visited in. Pure: no Geomys imports.
"""

import hashlib
import struct
from collections import deque
from typing import Iterable, Optional

_MASK = (1 << 64) - 1


def _field(out: list, item) -> None:
    """Append an unambiguous encoding of a str/bytes/int/None item."""
    if item is None:
        out.append(b"n")
        return
    if isinstance(item, str):
        tag, data = b"s", item.encode("utf-8", "surrogatepass")
    elif isinstance(item, bytes):
        tag, data = b"b", item
    else:
        tag, data = b"i", str(item).encode()
    out.append(tag + struct.pack(">I", len(data)) + data)


def entry_digest(key, entry, expire_at_ms: Optional[int]) -> int:
    """The hash one key contributes to the digest."""
    parts: list = []
    _field(parts, key)
    if type(entry) is deque:
        parts.append(b"L")
        for element in entry:
            _field(parts, element)
    else:
        parts.append(b"S")
        _field(parts, entry)
    _field(parts, expire_at_ms)
    return int.from_bytes(hashlib.blake2b(b"".join(parts), digest_size=8).digest(), "big")


def combine(hashes: Iterable[int]) -> int:
    """Sum per-key hashes into the keyspace digest."""
    total = 0
    for value in hashes:
        total = (total + value) & _MASK
    return total


def as_text(digest: int) -> str:
    """The digest as INFO shows it: 16 hex digits."""
    return "%016x" % digest
