"""``GET /v1/events``: the live event feed, a JSON page or a ``text/event-stream``
(the design: ``corral.events``)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.responses import Response

from corral.api.guard import principal, while_allowed
from corral.api.problems import READ_FAULTS, responses
from corral.api.routes import parse_label_selector, visible_to
from corral.errors import InvalidInputError
from corral.events import (
    KEEP_ALIVE_MESSAGE,
    STREAM_READS,
    Broadcast,
    BroadcastingStore,
    Gaps,
    cursor_since,
    follow,
    read_page,
    sse_messages,
)
from corral.ids import looks_like_id
from corral.model import LABELS_MAX_ENTRIES, Status, TransitionEvent
from corral.store import Store
from corral.store.base import EVENTS_LIMIT_MAX, EventFilter
from corral.store.sqlite import EVENT_ID_MAX

EVENT_STREAM = "text/event-stream"
WORKLOADS_MAX = 500
"""The most ``workload=`` filters of one request."""
SINCE_SECONDS_MAX = 100 * 365 * 86400
"""``since_seconds`` at most: a century."""


class EventPage(BaseModel):
    """One page of ``GET /v1/events``: ``last_id`` is the ``after=`` of the next
    page (past the events the filters skip or the key may not see, so a page may be
    empty with more to come; never past an id not committed yet). Caught up, for
    now, when it equals ``after``."""

    items: list[TransitionEvent]
    last_id: int


SHOWN_MAX_CHARS = 40
"""The most characters of a bad ``Last-Event-ID`` a problem's detail repeats."""


def _cursor(after: int | None, last_event_id: str | None) -> int:
    """``Last-Event-ID``, else ``after=``, else 0 (the oldest event kept). The header
    wins: an EventSource reconnects to the URL it first opened, ``after=`` and all,
    adding the last id it got. Only ASCII digits (not ``int()``'s ``+5``, ``1_000``)."""
    value = (last_event_id or "").strip()
    if not value:
        return 0 if after is None else after
    if re.fullmatch(r"[0-9]{1,19}", value) and int(value) <= EVENT_ID_MAX:
        return int(value)
    shown = value[:SHOWN_MAX_CHARS] + ("…" if len(value) > SHOWN_MAX_CHARS else "")
    raise InvalidInputError(
        f"Last-Event-ID {shown!r} is not an event id (an integer from 0 to {EVENT_ID_MAX})"
    )


def build_event_router(store: Store) -> APIRouter:
    router = APIRouter()
    broadcast = store.broadcast if isinstance(store, BroadcastingStore) else Broadcast()
    gaps = Gaps()  # when this server first met each gap, for every page and stream
    reads = asyncio.Semaphore(STREAM_READS)  # the page reads of every stream at once

    @router.get(
        "/v1/events",
        response_model=EventPage,
        responses={
            **responses(422, *READ_FAULTS),
            200: {
                "content": {
                    EVENT_STREAM: {"schema": {"type": "string"}},
                }
            },
        },
        summary="Events of every workload the key may see, oldest first; live with"
        " follow=true (server-sent events)",
        operation_id="list_events",
        tags=["events"],
    )
    async def list_events(
        request: Request,
        after: Annotated[
            int | None,
            Query(
                ge=0,
                le=EVENT_ID_MAX,
                description="Events after this id, unless a Last-Event-ID header is"
                " sent (it wins: an EventSource reconnects to the same URL with it);"
                " else 0.",
            ),
        ] = None,
        workload: Annotated[
            list[str], Query(max_length=WORKLOADS_MAX, description="Any of these workloads.")
        ] = [],  # noqa: B006
        label: Annotated[
            list[str],
            Query(max_length=LABELS_MAX_ENTRIES, description="`key=value`; every one must match."),
        ] = [],  # noqa: B006
        status: Annotated[list[Status], Query(description="Moving to any of these statuses.")] = [],  # noqa: B006
        since_seconds: Annotated[
            float | None,
            Query(
                ge=0,
                le=SINCE_SECONDS_MAX,
                description="Start at the first event of the last N seconds, when neither"
                " `after` nor Last-Event-ID is given (a reconnect resumes where it was).",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=EVENTS_LIMIT_MAX)] = 100,
        follow_: Annotated[
            bool,
            Query(
                alias="follow",
                description="A text/event-stream of every event as it happens (a"
                " comment every 15 s when there is none), until the client leaves.",
            ),
        ] = False,
        last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        who = principal(request)
        for workload_id in workload:
            if not looks_like_id(workload_id):
                raise InvalidInputError(f"workload {workload_id!r} is not a workload id")
        matching = EventFilter(
            owner=visible_to(who),
            workload_ids=workload,
            labels=parse_label_selector(label),
            statuses=status,
        )
        cursor = _cursor(after, last_event_id)
        if since_seconds is not None and after is None and not (last_event_id or "").strip():
            cursor = await cursor_since(store, since_seconds)
        if not follow_:
            items, last_id = await read_page(store, cursor, matching, limit=limit, gaps=gaps)
            body = EventPage.model_construct(items=items, last_id=last_id)
            return Response(body.model_dump_json(), media_type="application/json")
        # Read once before answering: a bad filter or a database fault is a problem
        # with its status code, not a broken stream.
        await store.event_ids_after(cursor, limit=1)

        async def stream() -> AsyncIterator[bytes]:
            yield KEEP_ALIVE_MESSAGE  # the headers and a first byte, at once
            pages = follow(store, broadcast, cursor, matching, gaps=gaps, reads=reads)
            async for page in while_allowed(request, pages):
                yield sse_messages(page)

        return StreamingResponse(
            stream(),
            media_type=EVENT_STREAM,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router
