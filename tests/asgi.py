"""A synchronous face over ``httpx.AsyncClient(transport=ASGITransport(app))``, so
plain (and hypothesis stateful) tests can drive the real app in process: on a loop
of its own, or through ``run`` (``BlockingStore.run``: the loop the app's store
serves). ``on_loop`` serves an app on such a loop to clients that bring their own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
from fastapi import FastAPI


class SyncASGIClient:
    def __init__(
        self,
        app: FastAPI,
        *,
        raise_app_exceptions: bool = True,
        token: str | None = None,
        run: Callable[[Coroutine[Any, Any, Any]], Any] | None = None,
    ) -> None:
        self._loop = None if run is not None else asyncio.new_event_loop()
        self._run = run or self._loop_run
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=headers
        )

    def _loop_run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` where the requests run (it may use ``self.client``)."""
        return self._run(coro)

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self._run(self._client.request(method, url, **kwargs))
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self._run(self._client.aclose())
        if self._loop is not None:
            self._loop.close()


Message = dict[str, Any]
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


def on_loop(app: ASGIApp, loop: asyncio.AbstractEventLoop) -> ASGIApp:
    """``app``, run on ``loop`` (``BlockingStore.loop``, where its store's connections
    live) whichever loop calls it; its ``receive`` and ``send`` run back on the
    caller's. For clients that run requests on a loop of their own (schemathesis)."""

    async def served(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        caller = asyncio.get_running_loop()

        async def receive_there() -> Message:
            message: Message = await _on(caller, receive())
            return message

        async def send_there(message: Message) -> None:
            await _on(caller, send(message))

        await _on(loop, app(scope, receive_there, send_there))

    return served


def _on(loop: asyncio.AbstractEventLoop, work: Awaitable[Any]) -> Awaitable[Any]:
    """``work`` run on ``loop``, awaitable on the running one."""
    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))  # type: ignore[arg-type]
