"""Ids and timestamps."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from corral import ids


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Threads switch every microsecond, and at every line of ``now_rfc3339``: CPython
    only switches threads at calls and loops, and there is neither between the
    function's test of the cached second and its use, so without the line hook the
    race could not show on this interpreter (it can on a free-threaded one)."""
    code = ids.now_rfc3339.__code__

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return on_line if frame.f_code is code else None

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threading.settrace(on_call)
    yield
    threading.settrace(None)  # type: ignore[arg-type]
    sys.setswitchinterval(interval)


def test_now_rfc3339_is_never_outside_the_call_across_threads(eager_switching: None) -> None:
    """The cached second is read once: a thread never pairs one second's micros with
    another second's text (a time ~1 s in the past, or in the future). Runs across two
    second boundaries; the old code failed here in about 5 runs of 6."""
    bad: list[tuple[str, str, str]] = []
    counts: list[int] = []
    end = (time.time_ns() // 1_000_000_000 + 3) * 1_000_000_000

    def stamp(micros: int, texts: dict[int, str]) -> str:
        second, fraction = divmod(micros, 1_000_000)
        text = texts.get(second)
        if text is None:
            text = texts[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{text}.{fraction:06d}Z"

    def work() -> None:
        texts: dict[int, str] = {}
        n = 0
        while True:
            before = time.time_ns() // 1000
            now = ids.now_rfc3339()
            after = time.time_ns() // 1000
            n += 1
            low, high = stamp(before, texts), stamp(after, texts)
            if not low <= now <= high:  # fixed-width RFC 3339 sorts as text
                bad.append((low, now, high))
            if after * 1000 >= end:
                break
        counts.append(n)

    threads = [threading.Thread(target=work) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) > 1000
    assert not bad, f"{len(bad)} of {sum(counts)} stamps outside their call, e.g. {bad[:3]}"


def test_an_id_prefix_range_holds_exactly_the_ids_with_that_prefix() -> None:
    rng = random.Random(9)
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    made = [ids.new_id() for _ in range(200)]
    made += ["".join(rng.choice(alphabet) for _ in range(26)) for _ in range(2000)]
    for _ in range(300):
        source = rng.choice(made)
        prefix = source[: rng.randint(4, 26)]
        if rng.random() < 0.5:  # change its last character, often to z or 9
            prefix = prefix[:-1] + rng.choice(alphabet[-3:] + "9" + alphabet)
        ids.check_id_prefix(prefix)
        low, high = ids.id_prefix_range(prefix)
        assert {i for i in made if low <= i < high} == {i for i in made if i.startswith(prefix)}
