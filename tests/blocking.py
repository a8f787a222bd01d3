"""``BlockingStore``: a synchronous face over an async ``Store``, for the tests that
are synchronous by nature (the contract suite, hypothesis state machines, races on
threads). Each call runs the real store's coroutine on a private event loop in a
background thread and waits for it; several threads may call at once (their calls
then overlap on that loop, as concurrent requests do on a server's)."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class BlockingStore:
    def __init__(self, store: Any) -> None:
        self.inner = store
        self.loop = asyncio.new_event_loop()
        """The loop the store serves (a PostgreSQL store's pool stays on it)."""
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on this store's loop and return its result (or raise)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    @property
    def url(self) -> str:
        return str(self.inner.url)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            close: Callable[[], Any] = self.inner.close
            if asyncio.iscoroutinefunction(close):
                self.run(close())
            else:
                close()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
