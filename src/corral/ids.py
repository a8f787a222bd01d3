"""Time-sortable workload ids and RFC 3339 timestamps."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
ID_LENGTH = 26
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every 10-bit value, 2 chars
_SHIFTS = tuple(range(120, -1, -10))  # 13 pairs: 130 bits, the top 2 always 0
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
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def looks_like_id(text: str) -> bool:
    """True when ``text`` has the shape of an id (used to validate cursors)."""
    return len(text) == ID_LENGTH and all(c in _ALPHABET for c in text)


_second: tuple[int, str] = (-1, "")


def now_rfc3339() -> str:
    """The current UTC time, e.g. ``2026-11-28T15:18:27.123456Z`` (the formatted
    second is cached: this runs several times per request)."""
    global _second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second  # read once: another thread may replace it between two reads
    if seconds != cached[0]:
        cached = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
        _second = cached
    return f"{cached[1]}.{micros:06d}Z"
