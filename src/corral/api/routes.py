"""The v1 routes: parse, call the store or scheduler, serialize. Nothing else.

Responses are serialized by Pydantic's ``model_dump_json`` and returned as ready
``Response`` objects (the declared ``response_model`` documents them in OpenAPI
without a second validation pass). An endpoint that takes the ``Request`` alone and
returns a ``Response`` runs without FastAPI's per-request machinery (``direct.py``):
the hot ones (create) are written that way, reading headers and bodies themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from corral.api.access import note
from corral.api.guard import principal, while_allowed
from corral.api.logproxy import LogProxy
from corral.api.problems import READ_FAULTS, WRITE_FAULTS, responses
from corral.api.schemas import (
    QUEUE_HEAD,
    Amounts,
    CleanRequest,
    CleanResult,
    KillRequest,
    KillResult,
    NotKilled,
    QueueEntry,
    Readiness,
    ServerStatus,
    Transitions,
    WorkloadList,
)
from corral.errors import (
    ExceedsCapacityError,
    FieldError,
    ForbiddenError,
    InvalidInputError,
    UnsupportedMediaTypeError,
)
from corral.ids import ID_LENGTH, ID_PREFIX_MIN, ID_PREFIX_PATTERN
from corral.logs import FileLogs, LogReader, follow_log, log_chunks, open_reader_off_loop
from corral.model import (
    LABEL_SELECTOR_RE,
    LABELS_MAX_ENTRIES,
    NAME_MAX_CHARS,
    NO_NUL,
    NUL_FREE,
    TERMINAL,
    Event,
    Status,
    StatusUpdate,
    TokenCreate,
    Workload,
    WorkloadBatch,
    WorkloadCreate,
    check_label,
    transitions_as_data,
)
from corral.retention import Retention
from corral.scheduler import Scheduler
from corral.store import InvalidTransitionError, NotFoundError, Store
from corral.store.base import LIST_LIMIT_MAX, Principal
from corral.store.batch import CreateBatcher
from corral.store.errors import StorageFullError, StoreBusyError

JSON = "application/json"
IDEMPOTENCY_KEY_MAX_CHARS = 255
IDEMPOTENCY_KEY_PARAM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Repeat a request safely: the same key and body replay the original response.",
    "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_CHARS},
}
"""Read from ``request.headers`` rather than declared as a FastAPI ``Header``: its
dependency machinery cost about a tenth of the create path."""
CURSOR_PATTERN = "^([0-9a-hjkmnp-tv-z]{26})?$"

WorkloadId = Annotated[
    str,
    PathParam(description="The workload's id.", json_schema_extra={"pattern": NO_NUL}),
    NUL_FREE,
]


class EventList(BaseModel):
    items: list[Event]


class WorkloadBatchCreated(BaseModel):
    """The answer to ``POST /v1/workloads/batch``: the workloads, in the order given."""

    items: list[Workload]


def json_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(model.model_dump_json(), status_code, headers, JSON)


def parse_label_selector(selectors: list[str]) -> list[tuple[str, str]]:
    """``["team=ml", …]`` -> ``[("team", "ml"), …]``, or ``InvalidInputError``."""
    pairs = []
    for selector in selectors:
        key, sep, value = selector.partition("=")
        if not sep:
            raise InvalidInputError(f"label filter {selector!r} must look like key=value")
        try:
            check_label(key, value)
        except ValueError as exc:
            raise InvalidInputError(f"label filter {selector!r}: {exc}") from None
        pairs.append((key, value))
    return pairs


M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """Validate the JSON body in one pass from bytes. It must be declared
    ``application/json``: what a web page may send without a CORS preflight
    (``text/plain``, forms) is refused with 415 before it is read."""
    content_type = request.headers.get("content-type")
    if (content_type or "").split(";", 1)[0].strip().lower() != JSON:
        raise UnsupportedMediaTypeError(
            f"the body must be JSON sent as Content-Type: application/json, not"
            f" {content_type or 'without a Content-Type'}"
            " (curl: --json '{…}', or -H 'Content-Type: application/json')"
        )
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in errors]
        ) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body read by ``parse_body`` (its schema is added by ``app.py``)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": ref}}}}


QUERY_ITEM_PATTERNS = {
    "label": LABEL_SELECTOR_RE.pattern,
    "workload": "^[0-9a-hjkmnp-tv-z]{26}$",  # GET /v1/events: ids
}
"""Patterns of list query items, which FastAPI neither documents nor checks
(``parse_label_selector`` checks them)."""

BODY_MODELS: tuple[type[BaseModel], ...] = (
    WorkloadCreate,
    WorkloadBatch,
    StatusUpdate,
    TokenCreate,
    KillRequest,
    CleanRequest,
)
KILLS_PER_TURN = 100
"""A bulk kill lets the event loop serve others after this many kills."""


CREATED_HEADERS = {
    "Location": {"description": "The workload's URL.", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this answer replays an earlier request's.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def idempotency_key_of(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, if any (422 when it is too long, or holds a
    NUL: see ``NUL_FREE``)."""
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise InvalidInputError(
            f"Idempotency-Key is longer than {IDEMPOTENCY_KEY_MAX_CHARS} characters"
        )
    if key is not None and "\x00" in key:
        raise InvalidInputError("Idempotency-Key: must not contain a NUL character")
    return key


def visible_to(who: Principal) -> str | None:
    """The owner filter for ``who``: admins see every workload, users their own."""
    return None if who.admin else who.user


READY_TIMEOUT_SECONDS = 1.0
"""How long ``/readyz`` waits for the database's answer."""


def build_router(
    store: Store,
    scheduler: Scheduler,
    data_dir: Path,
    log_proxy: LogProxy | None = None,
    retention: Retention | None = None,
) -> APIRouter:
    """The v1 routes; ``log_proxy`` (several servers on one database) forwards a log
    request to the server that keeps the log (None: every log is kept here);
    ``retention`` deletes for ``POST /v1/workloads/clean`` (default: one over this
    store and ``data_dir``'s logs)."""
    router = APIRouter()
    _workload_routes(router, store, scheduler)
    _list_route(router, store, scheduler)
    _bulk_kill_route(router, store, scheduler)
    _clean_route(router, retention or Retention(store, scheduler, data_dir / "logs"))
    _batch_routes(router, store, scheduler)
    _log_routes(router, store, scheduler, data_dir, log_proxy)
    _meta_routes(router, store, scheduler)
    return router


def with_stopping(scheduler: Scheduler, workload: Workload) -> Workload:
    """``workload`` with ``stopping`` set from what the scheduler knows (only a
    workload past ``pending`` can have a process)."""
    if workload.status is not Status.PENDING and scheduler.is_stopping(workload):
        workload.stopping = True
    return workload


def _workload_routes(router: APIRouter, store: Store, scheduler: Scheduler) -> None:
    creates = CreateBatcher(store, scheduler.unanswered)

    @router.post(
        "/v1/workloads",
        status_code=201,
        response_model=Workload,
        responses={
            201: {
                "description": "Created (or, with a repeated Idempotency-Key, replayed)",
                "headers": CREATED_HEADERS,
            },
            **responses(413, 422, *WRITE_FAULTS),
        },
        summary="Submit a workload (owned by the key's user)",
        operation_id="create_workload",
        tags=["workloads"],
        openapi_extra={**json_body(WorkloadCreate), "parameters": [IDEMPOTENCY_KEY_PARAM]},
    )
    async def create_workload(request: Request) -> Response:
        spec = await parse_body(request, WorkloadCreate)
        idempotency_key = idempotency_key_of(request)
        scheduler.check_fits(spec.resources)
        who = principal(request)
        start = await scheduler.start_at_submit(spec, who.user)
        try:
            workload, replayed = await creates.create(
                spec, owner=who.user, idempotency_key=idempotency_key, actor=who.user, start=start
            )
        except asyncio.CancelledError:
            raise  # (its create may still be written: ``creates`` tells the scheduler)
        except BaseException:
            scheduler.not_started(start)
            raise
        headers = {"Location": f"/v1/workloads/{workload.id}"}
        note(request.scope, id=workload.id, name=workload.name)
        if replayed:
            headers["Idempotent-Replayed"] = "true"
            scheduler.not_started(start)
        else:
            scheduler.submitted(workload, start)  # (one started now is launched first)
        return json_response(workload, 201, headers)

    @router.get(
        "/v1/workloads/{workload_id}",
        response_model=Workload,
        responses=responses(404, *READ_FAULTS),
        summary="Get a workload",
        operation_id="get_workload",
        tags=["workloads"],
    )
    async def get_workload(workload_id: WorkloadId, request: Request) -> Response:
        workload = await store.get_workload(workload_id, owner=visible_to(principal(request)))
        return json_response(with_stopping(scheduler, workload))

    @router.delete(
        "/v1/workloads/{workload_id}",
        response_model=Workload,
        responses=responses(404, 409, *WRITE_FAULTS),
        summary="Kill a workload",
        operation_id="kill_workload",
        tags=["workloads"],
    )
    async def kill_workload(workload_id: WorkloadId, request: Request) -> Response:
        note(request.scope, id=workload_id)
        who = principal(request)
        workload = await kill(scheduler, workload_id, who.user, visible_to(who))
        return json_response(workload)

    @router.put(
        "/v1/workloads/{workload_id}/status",
        response_model=Workload,
        responses=responses(403, 404, 409, 413, 422, *WRITE_FAULTS),
        summary="Change a workload's status (admin keys; for runners outside corral)",
        openapi_extra=json_body(StatusUpdate),
        operation_id="set_workload_status",
        tags=["workloads"],
    )
    async def put_status(workload_id: WorkloadId, request: Request) -> Response:
        who = principal(request)
        if not who.admin:
            await store.get_workload(workload_id, owner=who.user)  # 404 unless it is theirs
            raise ForbiddenError(
                "only admin keys may set a workload's status; stop yours with DELETE"
            )
        update = await parse_body(request, StatusUpdate)
        note(request.scope, id=workload_id)
        workload = await scheduler.set_status(
            workload_id,
            update.status,
            exit_code=update.exit_code,
            reason=update.reason,
            actor=who.user,
        )
        if workload.status in TERMINAL:
            scheduler.stopped(workload)
        return json_response(with_stopping(scheduler, workload))

    @router.get(
        "/v1/workloads/{workload_id}/events",
        response_model=EventList,
        responses=responses(404, *READ_FAULTS),
        summary="A workload's events, oldest first",
        operation_id="list_workload_events",
        tags=["workloads"],
    )
    async def list_events(workload_id: WorkloadId, request: Request) -> Response:
        events = await store.list_events(workload_id, owner=visible_to(principal(request)))
        return json_response(EventList.model_construct(items=events))


def _list_route(router: APIRouter, store: Store, scheduler: Scheduler) -> None:

    @router.get(
        "/v1/workloads",
        response_model=WorkloadList,
        responses=responses(403, 422, *READ_FAULTS),
        summary="List workloads, newest first (the key's user's; all users' for admins)",
        operation_id="list_workloads",
        tags=["workloads"],
    )
    async def list_workloads(
        request: Request,
        status: Annotated[list[Status], Query(description="Any of these statuses.")] = [],  # noqa: B006
        label: Annotated[
            list[str],
            Query(
                max_length=LABELS_MAX_ENTRIES,
                description="`key=value`; every one must match.",
            ),
        ] = [],  # noqa: B006
        limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 50,
        cursor: Annotated[
            str,
            Query(
                pattern=CURSOR_PATTERN,
                description="`next_cursor` of the previous page; empty for the first.",
            ),
        ] = "",
        all_users: Annotated[
            bool, Query(description="Every user's workloads (admin keys only).")
        ] = False,
        id_prefix: Annotated[
            str,
            Query(
                description=f"Ids starting with this ({ID_PREFIX_MIN} to {ID_LENGTH}"
                " characters of an id); empty for any.",
                # Checked by the store, which says what is wrong with a bad one.
                json_schema_extra={"pattern": f"^({ID_PREFIX_PATTERN[1:-1]})?$"},
            ),
        ] = "",
        name: Annotated[
            str | None,
            Query(
                max_length=NAME_MAX_CHARS,
                description="This exact name.",
                json_schema_extra={"pattern": NO_NUL},
            ),
            NUL_FREE,
        ] = None,
        count: Annotated[
            bool,
            Query(description="Add `total`: how many match, on every page together."),
        ] = False,
    ) -> Response:
        who = principal(request)
        if all_users and not who.admin:
            raise ForbiddenError("only admin keys may list every user's workloads")
        labels = parse_label_selector(label)
        owner = None if all_users else who.user
        page = await store.list_workloads(
            statuses=status,
            labels=labels,
            limit=limit,
            cursor=cursor or None,
            owner=owner,
            id_prefix=id_prefix or None,
            name=name,
        )
        for item in page.items:
            with_stopping(scheduler, item)
        if not count:
            body = WorkloadList.model_construct(items=page.items, next_cursor=page.next_cursor)
            return Response(body.model_dump_json(exclude={"total"}), media_type=JSON)
        total = await store.count_workloads(
            statuses=status, labels=labels, owner=owner, id_prefix=id_prefix or None, name=name
        )
        return json_response(
            WorkloadList.model_construct(
                items=page.items, next_cursor=page.next_cursor, total=total
            )
        )


def _batch_routes(router: APIRouter, store: Store, scheduler: Scheduler) -> None:

    @router.post(
        "/v1/workloads/batch",
        status_code=201,
        response_model=WorkloadBatchCreated,
        operation_id="create_workloads",
        tags=["workloads"],
        responses={
            201: {
                "description": "Created, all of them (or, with a repeated Idempotency-Key,"
                " replayed)",
                "headers": {"Idempotent-Replayed": CREATED_HEADERS["Idempotent-Replayed"]},
            },
            **responses(413, 422, *WRITE_FAULTS),
        },
        summary="Submit several workloads, all or none (a batch, an array, a pipeline)",
        openapi_extra={**json_body(WorkloadBatch), "parameters": [IDEMPOTENCY_KEY_PARAM]},
    )
    async def create_workloads(request: Request) -> Response:
        batch = await parse_body(request, WorkloadBatch)
        idempotency_key = idempotency_key_of(request)
        for i, spec in enumerate(batch.items):
            try:
                scheduler.check_fits(spec.resources)
            except ExceedsCapacityError as exc:
                raise FieldError(("items", i, "resources"), str(exc)) from None
        who = principal(request)
        workloads, replayed = await store.create_batch(
            batch.items,
            owner=who.user,
            max_running=batch.max_running,
            idempotency_key=idempotency_key,
            actor=who.user,
        )
        note(request.scope, batch_id=workloads[0].batch_id, count=len(workloads))
        headers = {}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        else:
            for workload in workloads:
                scheduler.submitted(workload)
        return json_response(WorkloadBatchCreated.model_construct(items=workloads), 201, headers)


LOG_RESPONSES = responses(404, 422, *READ_FAULTS)
LOG_RESPONSES[503]["description"] = (
    "Service Unavailable: the database is busy (`busy`: retry), or the log cannot be"
    " had (`log-unavailable`, not worth retrying: it cannot be read, or another server"
    " keeps it and cannot be reached or answered with an error about the hop, or a"
    " forwarded request reached a server that does not keep it)"
)


class LogResponse(StreamingResponse):
    """A log's body, whose reader (holding the log open from its first read, so that
    a log removed meanwhile is read whole) is closed when the answer is over, sent or
    abandoned: a body's generator left suspended by a client gone is only collected
    later (a reference cycle through the exception), holding the file. By then no
    thread is reading (Starlette waits for a read under way before it returns)."""

    def __init__(self, body: Iterator[bytes] | AsyncIterator[bytes], reader: LogReader) -> None:
        super().__init__(body, media_type="text/plain")
        self.reader = reader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.reader.close()


def _log_routes(
    router: APIRouter,
    store: Store,
    scheduler: Scheduler,
    data_dir: Path,
    log_proxy: LogProxy | None,
) -> None:

    @router.get(
        "/v1/workloads/{workload_id}/logs",
        response_class=PlainTextResponse,
        responses={**LOG_RESPONSES, 200: {"content": {"text/plain": {}}}},
        summary="A workload's output (stdout and stderr as written)",
        operation_id="get_workload_logs",
        tags=["workloads"],
    )
    async def get_logs(
        request: Request,
        workload_id: WorkloadId,
        follow: Annotated[bool, Query(description="Stream until the workload ends.")] = False,
        tail: Annotated[
            int | None,
            Query(
                ge=0,
                le=1_000_000,
                description="Last N lines (looked for at most 64 MiB back: lines that"
                " start further back are left out).",
            ),
        ] = None,
    ) -> Response:
        workload = await store.get_workload(workload_id, owner=visible_to(principal(request)))
        logs = scheduler.executor.logs if scheduler.executor else FileLogs(data_dir)
        path = logs.path(workload_id)
        if log_proxy is not None and log_proxy.forwarded(request):
            await log_proxy.received(workload, request, here=path)  # or a 503: not ours
        elif log_proxy is not None:
            forwarded = await log_proxy.answer(workload, request, follow=follow, here=path)
            if forwarded is not None:  # kept by another server: its answer
                return forwarded
        # A log the OS refuses is a problem now, before a body; the tail is found off the loop.
        reader = await open_reader_off_loop(path, tail)
        if not follow:  # what is there now, streamed from disk
            return LogResponse(log_chunks(reader), reader)

        async def finished() -> bool:
            if scheduler.is_active(workload_id):
                return False  # terminal already (killed), but the process may still write
            if scheduler.process_over(workload_id):
                return True  # its end is not stored yet (retried), but its output is all
            try:
                return (await store.get_workload(workload_id)).status in TERMINAL
            except NotFoundError:
                return True  # deleted (retention): ended; the reader holds its log open
            except (StorageFullError, StoreBusyError):
                return False  # ask again on the next poll

        chunks = while_allowed(request, follow_log(reader, finished))
        return LogResponse(chunks, reader)


async def kill(scheduler: Scheduler, workload_id: str, actor: str, owner: str | None) -> Workload:
    """Kill one workload (``owner``'s, when given) as ``actor``: the store's transition
    (``Scheduler.set_status``), then the scheduler stops its process.
    ``NotFoundError``, ``InvalidTransitionError`` as the store's."""
    workload = await scheduler.set_status(workload_id, Status.KILLED, actor=actor, owner=owner)
    scheduler.stopped(workload)
    return with_stopping(scheduler, workload)


def _bulk_kill_route(router: APIRouter, store: Store, scheduler: Scheduler) -> None:

    @router.post(
        "/v1/workloads/kill",
        response_model=KillResult,
        responses=responses(403, 413, 422, *WRITE_FAULTS),
        summary="Kill several workloads: by id, by a selector, or all the active ones",
        description="Each workload is killed on its own, as by `DELETE /v1/workloads/{id}`;"
        " one that ended first is in `not_killed`. A database fault stops the request"
        " (503, 507) with the kills before it done: send it again.",
        openapi_extra=json_body(KillRequest),
        operation_id="kill_workloads",
        tags=["workloads"],
    )
    async def kill_workloads(request: Request) -> Response:
        who = principal(request)
        body = await parse_body(request, KillRequest)
        if not body.ids and not body.selects:
            raise InvalidInputError(
                "say which workloads: ids, a selector (status, labels, name) or all"
            )
        if body.all_users and not who.admin:
            raise ForbiddenError("only admin keys may kill every user's workloads")
        owner = None if body.all_users else who.user
        result = KillResult(killed=[], not_killed=[], not_found=[])
        seen: set[str] = set()
        for n, workload_id in enumerate(dict.fromkeys(body.ids), 1):
            seen.add(workload_id)
            await _kill_one(scheduler, workload_id, who.user, owner, result)
            if n % KILLS_PER_TURN == 0:
                await asyncio.sleep(0)
        if body.selects:
            # Pending ones first: a running one killed frees resources that the
            # scheduler (running between pages) would hand to a pending one to be killed.
            # The selection is taken whole before any kill, so a pending one the
            # scheduler starts meanwhile is killed too (it matched when asked).
            statuses = {Status(s) for s in body.status} or {Status.PENDING, Status.RUNNING}
            selected: list[str] = []
            for status in sorted(statuses, key=lambda s: s is not Status.PENDING):
                async for workload in _selected(store, status, body, owner):
                    if workload.id not in seen:
                        seen.add(workload.id)
                        selected.append(workload.id)
            for n, workload_id in enumerate(selected, 1):
                await _kill_one(scheduler, workload_id, who.user, owner, result)
                if n % KILLS_PER_TURN == 0:
                    await asyncio.sleep(0)
        note(
            request.scope,
            killed=len(result.killed),
            not_killed=len(result.not_killed),
            not_found=len(result.not_found),
        )
        return json_response(result)


def _clean_route(router: APIRouter, retention: Retention) -> None:

    @router.post(
        "/v1/workloads/clean",
        response_model=CleanResult,
        responses=responses(413, 422, *WRITE_FAULTS),
        summary="Delete finished workloads older than an age, with their events and logs",
        description="Deletes the completed, failed and killed workloads that ended more"
        " than `older_than_seconds` ago: with an admin key every user's, with a user key"
        " the user's own. A workload that a pending or running one depends on is kept"
        " until that one has ended. Deleted in batches of 500, each its own transaction:"
        " a database fault (503, 507) stops it with the batches before it done (send it"
        " again). A deleted workload answers 404, and its events leave `GET /v1/events`.",
        openapi_extra=json_body(CleanRequest),
        operation_id="clean_workloads",
        tags=["workloads"],
    )
    async def clean_workloads(request: Request) -> Response:
        who = principal(request)
        body = await parse_body(request, CleanRequest)
        deleted = await retention.clean(body.older_than_seconds, owner=visible_to(who))
        note(request.scope, older_than_seconds=body.older_than_seconds, deleted=deleted)
        return json_response(CleanResult(deleted=deleted))


async def _selected(
    store: Store, status: Status, body: KillRequest, owner: str | None
) -> AsyncIterator[Workload]:
    """The workloads of ``status`` that ``body``'s selector selects, page by page
    (the event loop serves others between two pages)."""
    cursor = None
    while True:
        page = await store.list_workloads(
            statuses=[status],
            labels=sorted(body.labels.items()),
            name=body.name,
            owner=owner,
            limit=KILLS_PER_TURN,
            cursor=cursor,
        )
        for workload in page.items:
            yield workload
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
        await asyncio.sleep(0)


async def _kill_one(
    scheduler: Scheduler,
    workload_id: str,
    actor: str,
    owner: str | None,
    result: KillResult,
) -> None:
    """Kill one target of a bulk kill, putting it in the list of ``result`` it belongs
    to (faults of the database propagate)."""
    try:
        result.killed.append(await kill(scheduler, workload_id, actor, owner))
    except NotFoundError:
        result.not_found.append(workload_id)
    except InvalidTransitionError as exc:
        result.not_killed.append(NotKilled(id=workload_id, status=exc.current, detail=str(exc)))


def _meta_routes(router: APIRouter, store: Store, scheduler: Scheduler) -> None:

    @router.get(
        "/v1/status",
        response_model=ServerStatus,
        responses=responses(*READ_FAULTS),
        summary="What the server can run, what runs, and the head of the queue",
        operation_id="get_status",
        tags=["meta"],
    )
    async def get_status(request: Request) -> Response:
        who = principal(request)
        owner = visible_to(who)
        counts = await store.count_by_status(owner=owner)
        cap, free = scheduler.capacity(), scheduler.free()
        head, length = await scheduler.queue(QUEUE_HEAD, owner=owner)
        status = ServerStatus(
            executor="none" if scheduler.executor is None else scheduler.executor.kind,
            capacity=Amounts(cpus=cap.cpus, memory_mb=cap.memory_mb, gpus=cap.gpus),
            used=Amounts(
                cpus=round(max(cap.cpus - free.cpus, 0.0), 6),
                memory_mb=max(cap.memory_mb - free.memory_mb, 0),
                gpus=max(cap.gpus - free.gpus, 0),
            ),
            free=Amounts(cpus=round(free.cpus, 6), memory_mb=free.memory_mb, gpus=free.gpus),
            counts=counts,
            queue=[
                QueueEntry(
                    id=w.id,
                    name=w.name,
                    owner=w.owner,
                    resources=w.resources,
                    priority=w.priority,
                    reason=reason,
                )
                for w, reason in head
            ],
            queue_length=length,
            server=scheduler.server.name if scheduler.server else None,
            leader=scheduler.server.leader if scheduler.server else None,
        )
        return json_response(status)

    @router.get(
        "/v1/transitions",
        response_model=Transitions,
        summary="The state machine as data",
        operation_id="get_transitions",
        tags=["meta"],
    )
    async def transitions() -> dict[str, list[str]]:
        return transitions_as_data()

    @router.get("/healthz", summary="Liveness", operation_id="healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A part is not ready"}},
        summary="Readiness: the database answers and the executor is up (no key)",
        operation_id="readyz",
        tags=["meta"],
    )
    async def readyz() -> Response:
        database = "ok"
        try:
            await asyncio.wait_for(store.ping(), READY_TIMEOUT_SECONDS)
        except Exception:  # any fault, or no answer in time: not ready, whatever it is
            database = "down"
        executor, role = scheduler.readiness()
        ready = Readiness.model_validate(
            {"database": database, "executor": executor, "scheduler": role}
        )
        code = 200 if database == executor == "ok" else 503
        return Response(ready.model_dump_json(), code, media_type="application/json")
