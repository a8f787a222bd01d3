"""Sizes and durations as people type them (corral.units)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("4096", 4096),
        ("4G", 4096),
        ("4g", 4096),
        ("4GB", 4096),
        ("4GiB", 4096),
        ("512M", 512),
        ("1.5G", 1536),
        ("2T", 2 * 1024 * 1024),
        ("1K", 1),
        ("0", 0),
        (" 8 G ", 8192),
        (".5G", 512),
    ],
)
def test_sizes(text: str, mib: int) -> None:
    assert parse_size(text) == mib


@pytest.mark.parametrize("text", ["", "G", "4X", "-1G", "4 GB B", "1e3", "nan", "9" * 400])
def test_bad_sizes_say_what_a_size_is(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("90s", 90),
        ("15m", 900),
        ("1h30m", 5400),
        ("1H30M", 5400),
        ("1.5h", 5400),
        ("2d", 172800),
        ("1d2h3m4s", 93784),
        ("30:00", 1800),
        ("90:00", 5400),
        ("1:30:00", 5400),
        ("100:00:00", 360000),
        ("1-12", 129600),
        ("1-12:30", 131400),
        ("1-12:30:15", 131415),
        ("0:00:01.5", 1.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "h", "1x", "-5", "1m1h", "1h1h", "1:60:00", "1-24:00", "1:2:3:4", "inf", "9" * 400]
)
def test_bad_durations_say_what_a_duration_is(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|clock"):
        parse_duration(text)


def test_shortest_forms() -> None:
    assert [format_size(n) for n in (0, 512, 1024, 1536, 1024 * 1024)] == [
        "0",
        "512M",
        "1G",
        "1536M",
        "1T",
    ]
    assert [format_duration(s) for s in (0, 45, 5400, 172800, 93784, 1.5)] == [
        "0s",
        "45s",
        "1h30m",
        "2d",
        "1d2h3m4s",
        "1.5s",
    ]


@given(st.integers(min_value=0, max_value=2**40))
def test_sizes_round_trip(mib: int) -> None:
    assert parse_size(format_size(mib)) == mib


@given(
    st.integers(min_value=0, max_value=10**9)
    | st.floats(min_value=0, max_value=10**9, allow_nan=False, allow_infinity=False)
)
def test_durations_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 99), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_clock_and_units_agree(d: int, h: int, m: int, s: int) -> None:
    clock = parse_duration(f"{d}-{h:02}:{m:02}:{s:02}")
    assert clock == parse_duration(f"{d}d{h}h{m}m{s}s") == d * 86400 + h * 3600 + m * 60 + s
    assert parse_duration(format_duration(clock)) == clock
