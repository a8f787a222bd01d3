"""A synchronous face over ``httpx.AsyncClient(transport=ASGITransport(app))``, so
plain (and hypothesis stateful) tests can drive the real app in process: on a loop
of its own, or through ``run`` (``BlockingStore.run``: the loop the app's store
serves)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
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
