"""A pure ASGI middleware that refuses request bodies over a size limit with 413."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.problems import BodyTooLargeError, problem

MAX_BODY_BYTES = 1 << 20  # 1 MiB


class BodyLimit:
    """413 for a declared ``Content-Length`` over the limit, at once; a body that
    streams past the limit (chunked) raises ``BodyTooLargeError`` while being read."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await problem(413, "body-too-large", self._detail())(scope, receive, send)
                    return
                if declared >= 0:  # the server enforces a declared length
                    await self.app(scope, receive, send)
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"
