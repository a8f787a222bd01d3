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


def id_ceiling(seconds: float) -> str:
    """An id above every id ``new_id`` made before ``seconds`` after the epoch (the
    first id of the millisecond after it): ids sort as text in the order of the time
    they start with, so ``id < id_ceiling(t)`` bounds an index walk to the workloads
    created before ``t`` (retention: one finished before a cutoff was created before
    it, by the clock that made its id)."""
    ms = max(0, min(int(seconds * 1000) + 1, (1 << 48) - 1))
    value = ms << 80
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def looks_like_id(text: str) -> bool:
    """True when ``text`` has the shape of an id (used to validate cursors)."""
    return len(text) == ID_LENGTH and all(c in _ALPHABET for c in text)


ID_PREFIX_MIN = 4
"""The shortest id prefix a listing accepts: 4 characters (20 bits) are what a person
types to name a workload among those of the same hour or so."""
ID_PREFIX_PATTERN = f"^[{_ALPHABET}]{{{ID_PREFIX_MIN},{ID_LENGTH}}}$"


def check_id_prefix(prefix: str) -> None:
    """Raise ``ValueError`` saying why, unless ``prefix`` can start an id: 4 to 26
    characters of the id alphabet (lower-case Crockford base32)."""
    if len(prefix) < ID_PREFIX_MIN:
        raise ValueError(
            f"id prefix {prefix!r} is too short: give at least {ID_PREFIX_MIN} characters"
        )
    if len(prefix) > ID_LENGTH:
        raise ValueError(
            f"id prefix {prefix[:40]!r}… is longer than an id ({ID_LENGTH} characters)"
        )
    bad = sorted({c for c in prefix if c not in _ALPHABET})
    if bad:
        hint = " (ids are lower case)" if any(c.lower() in _ALPHABET for c in bad) else ""
        raise ValueError(
            f"id prefix {prefix!r} has characters no id has: {', '.join(map(repr, bad))}{hint};"
            " ids use 0-9 and a-z but i, l, o and u"
        )


def id_prefix_range(prefix: str) -> tuple[str, str]:
    """``(low, high)``: the ids starting with ``prefix`` are those with ``low <= id <
    high`` (the alphabet is in ASCII order, so this is a range of the primary key)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def rfc3339_at(seconds: float) -> str:
    """The UTC time ``seconds`` after the epoch, written as ``now_rfc3339`` writes it
    (so that the two compare as text)."""
    whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{micros:06d}Z"


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
