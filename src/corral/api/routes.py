"""The v1 routes: parse, call the store or scheduler, serialize. Nothing else.

Responses are serialized by Pydantic's ``model_dump_json`` and returned as ready
``Response`` objects (the declared ``response_model`` documents them in OpenAPI
without a second validation pass).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from corral.api.access import note
from corral.api.guard import principal
from corral.api.problems import READ_FAULTS, WRITE_FAULTS, responses
from corral.errors import (
    ExceedsCapacityError,
    FieldError,
    ForbiddenError,
    InvalidInputError,
    UnsupportedMediaTypeError,
)
from corral.logs import follow_log, log_chunks, log_path, log_start, open_log
from corral.model import (
    LABEL_SELECTOR_RE,
    LABELS_MAX_ENTRIES,
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
from corral.scheduler import Scheduler
from corral.store import Store
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

WorkloadId = Annotated[str, PathParam(description="The workload's id.")]


class WorkloadList(BaseModel):
    items: list[Workload]
    next_cursor: str | None


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


QUERY_ITEM_PATTERNS = {"label": LABEL_SELECTOR_RE.pattern}
"""Patterns of list query items, which FastAPI neither documents nor checks
(``parse_label_selector`` checks them)."""

BODY_MODELS: tuple[type[BaseModel], ...] = (
    WorkloadCreate,
    WorkloadBatch,
    StatusUpdate,
    TokenCreate,
)


CREATED_HEADERS = {
    "Location": {"description": "The workload's URL.", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this answer replays an earlier request's.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def visible_to(who: Principal) -> str | None:
    """The owner filter for ``who``: admins see every workload, users their own."""
    return None if who.admin else who.user


def build_router(store: Store, scheduler: Scheduler, data_dir: Path) -> APIRouter:
    router = APIRouter()
    _workload_routes(router, store, scheduler)
    _batch_routes(router, store, scheduler)
    _log_routes(router, store, scheduler, data_dir)
    _meta_routes(router)
    return router


def _workload_routes(router: APIRouter, store: Store, scheduler: Scheduler) -> None:
    creates = CreateBatcher(store)

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
        openapi_extra={**json_body(WorkloadCreate), "parameters": [IDEMPOTENCY_KEY_PARAM]},
    )
    async def create_workload(request: Request) -> Response:
        spec = await parse_body(request, WorkloadCreate)
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and len(idempotency_key) > IDEMPOTENCY_KEY_MAX_CHARS:
            raise InvalidInputError(
                f"Idempotency-Key is longer than {IDEMPOTENCY_KEY_MAX_CHARS} characters"
            )
        scheduler.check_fits(spec.resources)
        who = principal(request)
        workload, replayed = await creates.create(
            spec, owner=who.user, idempotency_key=idempotency_key, actor=who.user
        )
        headers = {"Location": f"/v1/workloads/{workload.id}"}
        note(request.scope, id=workload.id, name=workload.name)
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        else:
            scheduler.submitted(workload)
        return json_response(workload, 201, headers)

    @router.get(
        "/v1/workloads",
        response_model=WorkloadList,
        responses=responses(403, 422, *READ_FAULTS),
        summary="List workloads, newest first (the key's user's; all users' for admins)",
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
    ) -> Response:
        who = principal(request)
        if all_users and not who.admin:
            raise ForbiddenError("only admin keys may list every user's workloads")
        page = store.list_workloads(
            statuses=status,
            labels=parse_label_selector(label),
            limit=limit,
            cursor=cursor or None,
            owner=None if all_users else who.user,
        )
        return json_response(
            WorkloadList.model_construct(items=page.items, next_cursor=page.next_cursor)
        )

    @router.get(
        "/v1/workloads/{workload_id}",
        response_model=Workload,
        responses=responses(404, *READ_FAULTS),
        summary="Get a workload",
    )
    async def get_workload(workload_id: WorkloadId, request: Request) -> Response:
        return json_response(store.get_workload(workload_id, owner=visible_to(principal(request))))

    @router.delete(
        "/v1/workloads/{workload_id}",
        response_model=Workload,
        responses=responses(404, 409, *WRITE_FAULTS),
        summary="Kill a workload",
    )
    async def kill_workload(workload_id: WorkloadId, request: Request) -> Response:
        note(request.scope, id=workload_id)
        who = principal(request)
        workload = store.update_workload_status(
            workload_id, Status.KILLED, actor=who.user, owner=visible_to(who)
        )
        scheduler.stopped(workload)
        return json_response(workload)

    @router.put(
        "/v1/workloads/{workload_id}/status",
        response_model=Workload,
        responses=responses(403, 404, 409, 413, 422, *WRITE_FAULTS),
        summary="Change a workload's status (admin keys; for runners outside corral)",
        openapi_extra=json_body(StatusUpdate),
    )
    async def put_status(workload_id: WorkloadId, request: Request) -> Response:
        who = principal(request)
        if not who.admin:
            store.get_workload(workload_id, owner=who.user)  # 404 unless it is theirs
            raise ForbiddenError(
                "only admin keys may set a workload's status; stop yours with DELETE"
            )
        update = await parse_body(request, StatusUpdate)
        note(request.scope, id=workload_id)
        workload = store.update_workload_status(
            workload_id,
            update.status,
            exit_code=update.exit_code,
            reason=update.reason,
            actor=who.user,
        )
        if workload.status in TERMINAL:
            scheduler.stopped(workload)
        return json_response(workload)

    @router.get(
        "/v1/workloads/{workload_id}/events",
        response_model=EventList,
        responses=responses(404, *READ_FAULTS),
        summary="A workload's events, oldest first",
    )
    async def list_events(workload_id: WorkloadId, request: Request) -> Response:
        events = store.list_events(workload_id, owner=visible_to(principal(request)))
        return json_response(EventList.model_construct(items=events))


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
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and len(idempotency_key) > IDEMPOTENCY_KEY_MAX_CHARS:
            raise InvalidInputError(
                f"Idempotency-Key is longer than {IDEMPOTENCY_KEY_MAX_CHARS} characters"
            )
        for i, spec in enumerate(batch.items):
            try:
                scheduler.check_fits(spec.resources)
            except ExceedsCapacityError as exc:
                raise FieldError(("items", i, "resources"), str(exc)) from None
        who = principal(request)
        workloads, replayed = store.create_batch(
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


def _log_routes(router: APIRouter, store: Store, scheduler: Scheduler, data_dir: Path) -> None:

    @router.get(
        "/v1/workloads/{workload_id}/logs",
        response_class=PlainTextResponse,
        responses={**responses(404, 422, *READ_FAULTS), 200: {"content": {"text/plain": {}}}},
        summary="A workload's output (stdout and stderr as written)",
    )
    async def get_logs(
        request: Request,
        workload_id: WorkloadId,
        follow: Annotated[bool, Query(description="Stream until the workload ends.")] = False,
        tail: Annotated[int | None, Query(ge=0, le=1_000_000, description="Last N lines.")] = None,
    ) -> Response:
        store.get_workload(workload_id, owner=visible_to(principal(request)))  # else 404
        path = log_path(data_dir, workload_id)
        fd = open_log(path)  # a log the OS refuses is a problem now, before a body
        try:
            start = log_start(fd, tail)
        finally:
            if fd is not None:
                os.close(fd)
        if not follow:  # what is there now, streamed from disk
            return StreamingResponse(log_chunks(path, start=start), media_type="text/plain")

        def finished() -> bool:
            if scheduler.is_active(workload_id):
                return False  # terminal already (killed), but the process may still write
            if scheduler.process_over(workload_id):
                return True  # its end is not stored yet (retried), but its output is all
            try:
                return store.get_workload(workload_id).status in TERMINAL
            except (StorageFullError, StoreBusyError):
                return False  # ask again on the next poll

        return StreamingResponse(follow_log(path, finished, start=start), media_type="text/plain")


def _meta_routes(router: APIRouter) -> None:

    @router.get("/v1/transitions", summary="The state machine as data")
    async def transitions() -> dict[str, list[str]]:
        return transitions_as_data()

    @router.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}
