"""``Threads``: a few threads that run blocking calls for an event loop, leaner than
``loop.run_in_executor`` (the SQLite store's writer and readers, the local
executor's launches)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class Threads:
    """Threads that run calls for an event loop: ``await threads.call(fn, …)``.

    Leaner than ``loop.run_in_executor`` (measured: a hop there and back in half its
    time): a job is a tuple on a ``queue.SimpleQueue``, and its answer goes back with
    one ``call_soon_threadsafe``. A job whose caller went away (its future cancelled)
    before a thread took it is not run."""

    def __init__(self, count: int, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False
        self._busy = 0  # calls made and not answered yet (counted on the loop)

    def idle(self) -> bool:
        """True when no call is under way or queued."""
        return self._busy == 0

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.submit(lambda: fn(*args, **kwargs))

    def submit(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``work`` now (jobs run in the order submitted); its future."""
        if self._closed:
            raise RuntimeError(f"{self.name} threads are closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._busy += 1
        future.add_done_callback(self._done)
        self._jobs.put((loop, future, work))
        return future

    def _done(self, _: asyncio.Future[Any]) -> None:
        self._busy -= 1

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, work = job
            if future.cancelled():
                continue
            try:
                result = work()
            except BaseException as exc:  # the caller's to see
                self._answer(loop, fail, future, exc)
            else:
                self._answer(loop, succeed, future, result)

    @staticmethod
    def _answer(
        loop: asyncio.AbstractEventLoop,
        settle: Callable[[asyncio.Future[Any], Any], None],
        future: asyncio.Future[Any],
        value: Any,
    ) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, future, value)

    def close(self) -> None:
        """Let the jobs queued finish, then end the threads (blocks until they have)."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


def succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
