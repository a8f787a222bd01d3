"""Sizes and durations as people type them: ``--memory 4G``, ``--timeout 1h30m``.

Sizes are in MiB, the unit of ``memory_mb``; suffixes are binary, as Slurm's
``--mem`` takes them: ``K``, ``M``, ``G``, ``T`` (optionally followed by ``B`` or
``iB``, any case); a bare number is MiB. A size that is not a whole number of MiB is
rounded up (``1K`` asks for 1 MiB), never down to less than was asked for.

Durations are in seconds. A bare number is seconds (what ``--timeout`` always took).
Units ``d``, ``h``, ``m``, ``s``, in that order, each at most once (``1h30m``,
``2d``, ``1.5h``, ``90s``); or Slurm's clock forms ``MM:SS``, ``HH:MM:SS``,
``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.

Byte counts (``--max-log-bytes 10M``) are in bytes: a bare whole number is bytes, the
same suffixes multiply by 1024 each; a fraction with a unit is rounded down to a byte.

``format_*`` write the shortest form ``parse_*`` reads back exactly. Standard library
only: the CLI imports this on every call.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_size", "parse_bytes", "parse_duration", "parse_size"]

_SIZE_RE = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?:(?P<unit>[kmgt])(?:i?b)?)?", re.I)
_SIZE_MIB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_UNITS_RE = re.compile("".join(rf"(?:(?P<{u}>{_NUMBER}){u})?" for u in _UNIT_SECONDS), re.I)
_CLOCK_RE = re.compile(
    r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+(?:\.\d+)?))?)?)"
    r"|(?:(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+(?:\.\d+)?))"
)


def parse_size(text: str) -> int:
    """MiB in ``text`` (``4G`` → 4096, ``512M``, ``1.5g``, ``4GiB``, ``4096``)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a size: write a number of MiB, or one with a unit (512M, 4G, 1.5T)"
        )
    unit = (match["unit"] or "m").lower()
    mib = float(match["number"]) * _SIZE_MIB[unit]
    if not math.isfinite(mib):
        raise ValueError(f"{text!r} is too large a size")
    return math.ceil(mib)


AGE_MAX_SECONDS = 100 * 365 * 86400
"""The largest age retention takes (``--older-than``, ``--retain-finished``)."""
AGE_MAX_TEXT = "100 years"

BYTES_MAX = (1 << 62) - 1
"""Beyond any disk: the largest log cap the shim takes (``ULONG_MAX / 4`` in
``executors/shim.c``, which works in unsigned longs with room to add)."""


def parse_bytes(text: str) -> int:
    """Bytes in ``text`` (``10M`` → 10485760, ``1G``, ``1.5K`` → 1536, ``4096``)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None or (match["unit"] is None and not match["number"].isdigit()):
        raise ValueError(
            f"{text!r} is not a number of bytes: write whole bytes (1048576) or a number with"
            " a unit (512K, 10M, 1.5G)"
        )
    unit = match["unit"]
    factor = 1024 ** ("kmgt".index(unit.lower()) + 1) if unit else 1
    number = match["number"]
    count = int(number) * factor if number.isdigit() else math.floor(float(number) * factor)
    if count > BYTES_MAX:
        raise ValueError(f"{text!r} is too large: at most {BYTES_MAX} bytes (2^62 - 1)")
    return count


def format_size(mib: int) -> str:
    """The shortest exact form of ``mib`` MiB: ``4G``, ``1536M``, ``2T``, ``0``."""
    if mib < 0:
        raise ValueError("a size is not negative")
    if mib == 0:
        return "0"
    for unit, factor in (("T", 1024 * 1024), ("G", 1024)):
        if mib % factor == 0:
            return f"{mib // factor}{unit}"
    return f"{mib}M"


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``90``, ``90s``, ``15m``, ``1h30m``, ``2d``, ``1:30:00``,
    ``1-12:00:00``)."""
    stripped = text.strip()
    seconds = _parse_plain(stripped)
    if seconds is None:
        seconds = _parse_units(stripped)
    if seconds is None:
        seconds = _parse_clock(stripped)
    if seconds is None:
        raise ValueError(
            f"{text!r} is not a duration: write seconds (90), units (90s, 15m, 1h30m, 2d)"
            " or a clock (1:30:00, 1-12:00:00)"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is too long a duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact form: ``1h30m``, ``45s``, ``2d``, ``0s``; a duration with a
    fraction of a second is written in seconds (``5401.25s``)."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError("a duration is a finite number of seconds, not negative")
    if seconds != int(seconds):
        from decimal import Decimal  # only here: the CLI's start-up does not pay for it

        return f"{Decimal(repr(seconds)):f}s"
    rest = int(seconds)
    if rest == 0:
        return "0s"
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _parse_plain(text: str) -> float | None:
    if re.fullmatch(_NUMBER, text) is None:
        return None
    return float(text)


def _parse_units(text: str) -> float | None:
    match = _UNITS_RE.fullmatch(text)
    if match is None or not text:
        return None
    total = 0.0
    for unit, size in _UNIT_SECONDS.items():
        value = match[unit]
        if value is not None:
            total += float(value) * size
    return total


def _parse_clock(text: str) -> float | None:
    match = _CLOCK_RE.fullmatch(text)
    if match is None:
        return None
    if match["d"] is not None:
        days, hours = int(match["d"]), int(match["dh"])
        minutes, secs = int(match["dm"] or 0), float(match["ds"] or 0)
    else:
        days, hours = 0, int(match["h"] or 0)
        minutes, secs = int(match["m"]), float(match["s"])
    clock = match["d"] is not None or match["h"] is not None
    if secs >= 60 or (clock and minutes >= 60) or (match["d"] is not None and hours >= 24):
        raise ValueError(
            f"{text!r} is not a clock: minutes and seconds go up to 59, hours after a day up to 23"
        )
    return days * 86400 + hours * 3600 + minutes * 60 + secs
