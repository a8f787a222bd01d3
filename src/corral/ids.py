"""Time-sortable workload ids and RFC 3339 timestamps."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
ID_LENGTH = 26
_lock = threading.Lock()
_last = 0


def new_id() -> str:
    """A 26-character id: 48 bits of milliseconds, then 80 random bits.

    Ids from one process strictly increase (the random part is incremented within a
    millisecond), so "newest first" is "largest id first".
    """
    global _last
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    with _lock:
        if value <= _last:
            value = _last + 1
        _last = value
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def looks_like_id(text: str) -> bool:
    """True when ``text`` has the shape of an id (used to validate cursors)."""
    return len(text) == ID_LENGTH and all(c in _ALPHABET for c in text)


def now_rfc3339() -> str:
    """The current UTC time, e.g. ``2026-11-28T15:18:27.123456Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
