"""Bodies and answers of the API that are not workloads themselves: the bulk kill,
the server's status and readiness, the state machine as data, and listings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from corral.model import (
    LABELS_MAX_ENTRIES,
    NAME_MAX_CHARS,
    NO_NUL,
    NUL_FREE,
    LabelKey,
    LabelValue,
    Resources,
    Status,
    Workload,
    _keys_schema,
)
from corral.store.base import OLDER_THAN_MAX_SECONDS

KILL_IDS_MAX = 1000
"""Ids one bulk kill may name (a selector has no such limit)."""
QUEUE_HEAD = 10
"""Pending workloads ``GET /v1/status`` shows."""


class WorkloadList(BaseModel):
    items: list[Workload]
    next_cursor: str | None
    total: int | None = Field(
        default=None,
        description="With `count=true` only: how many workloads match the filters, on"
        " every page together.",
    )


class KillRequest(BaseModel):
    """The body of ``POST /v1/workloads/kill``: ``ids``, a selector (``status``,
    ``labels``, ``name``; ``all: true`` selects without narrowing), or both (the
    workloads named and those selected). A selector without ``status`` selects the
    active workloads (pending, running)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # An empty request is refused (by the route, naming what to give); say so here
        # too, so that the schema refuses what the server refuses.
        json_schema_extra={
            "anyOf": [
                {"required": ["ids"], "properties": {"ids": {"minItems": 1}}},
                {"required": ["status"], "properties": {"status": {"minItems": 1}}},
                {"required": ["labels"], "properties": {"labels": {"minProperties": 1}}},
                {"required": ["name"], "properties": {"name": {"type": "string"}}},
                {"required": ["all"], "properties": {"all": {"const": True}}},
            ]
        },
    )

    ids: Annotated[
        list[Annotated[str, Field(json_schema_extra={"pattern": NO_NUL}), NUL_FREE]],
        Field(max_length=KILL_IDS_MAX, description="Workload ids, each killed if it is yours."),
    ] = []
    status: Annotated[
        list[Literal["pending", "running"]],
        Field(description="Select workloads in any of these statuses (default: both)."),
    ] = []
    labels: Annotated[
        dict[LabelKey, LabelValue],
        Field(
            max_length=LABELS_MAX_ENTRIES,
            json_schema_extra=_keys_schema,
            description="Select workloads carrying every one of these labels.",
        ),
    ] = {}
    name: Annotated[
        str | None,
        Field(
            max_length=NAME_MAX_CHARS,
            description="Select workloads of this name.",
            json_schema_extra={"pattern": NO_NUL},
        ),
        NUL_FREE,
    ] = None
    all: Annotated[
        bool, Field(description="Select every active workload (narrowed by the others).")
    ] = False
    all_users: Annotated[
        bool, Field(description="Every user's workloads, not only yours (admin keys only).")
    ] = False

    @property
    def selects(self) -> bool:
        """True when the request has a selector (besides, or instead of, ids)."""
        return bool(self.status or self.labels or self.name is not None or self.all)


class NotKilled(BaseModel):
    """A workload found but not killed: it had ended already (``status`` says how)."""

    id: str
    status: Status
    detail: str


class KillResult(BaseModel):
    """The answer of a bulk kill: each target is in exactly one list."""

    killed: list[Workload]
    not_killed: list[NotKilled]
    not_found: list[str] = Field(description="Ids given that name none of your workloads.")


class CleanRequest(BaseModel):
    """The body of ``POST /v1/workloads/clean``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    older_than_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=OLDER_THAN_MAX_SECONDS,
            allow_inf_nan=False,
            description="Delete the finished workloads (completed, failed, killed) that"
            " ended more than this many seconds ago (0: every finished one).",
        ),
    ]


class CleanResult(BaseModel):
    """The answer to ``POST /v1/workloads/clean``."""

    deleted: int = Field(description="How many workloads were deleted.")


class Amounts(BaseModel):
    """Amounts of the resources the scheduler hands out."""

    cpus: float
    memory_mb: int
    gpus: int


class QueueEntry(BaseModel):
    """A pending workload as the queue shows it."""

    id: str
    name: str | None
    owner: str
    resources: Resources
    priority: int
    reason: str | None


class ServerStatus(BaseModel):
    """The answer of ``GET /v1/status``."""

    executor: Literal["local", "ray", "none"]
    capacity: Amounts
    used: Amounts
    free: Amounts
    counts: dict[Status, int] = Field(
        description="Workloads in each status: yours (an admin key: everyone's)."
    )
    queue: list[QueueEntry] = Field(
        description=f"The first {QUEUE_HEAD} pending workloads, in the order the scheduler"
        " starts them (yours only, unless the key is an admin's)."
    )
    queue_length: int = Field(description="Pending workloads in the queue (as for `queue`).")
    server: str | None = Field(
        None, description="This server's name among the servers of its database."
    )
    leader: str | None = Field(
        None,
        description="The name of the server that schedules now (it holds the scheduler"
        " lease); null while none does.",
    )


class Transitions(RootModel[dict[Status, list[Status]]]):
    """The state machine: each status and the statuses it may move to."""


class Readiness(BaseModel):
    """The answer of ``GET /readyz``, 200 or 503 alike: each part's state."""

    database: Literal["ok", "down"] = Field(
        description="`ok` when the database answered `SELECT 1` within a second."
    )
    executor: Literal["ok", "down"] = Field(
        description="`down` when the scheduling loop has ended without being stopped."
    )
    scheduler: Literal["active", "standby", "never"] = Field(
        description="`active`: this server schedules; `standby`: another one holds the"
        " lease; `never`: this server runs nothing (`--executor none`)."
    )
