"""The server's data types (pydantic): request bodies and stored resources.

The state machine (``Status``, ``TRANSITIONS``, ``TERMINAL``) and the syntax of labels,
environment and user names are stated in ``corral.wire`` (standard library only, for
the light client) and re-exported here, so everything else (the store's guard, the
API's 409 bodies, ``GET /v1/transitions``) may read them from either. This module
knows nothing of HTTP, SQL or processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from corral.errors import FieldError
from corral.ids import looks_like_id
from corral.wire import ENV_NAME_RE as ENV_NAME_RE
from corral.wire import LABEL_KEY_MAX_CHARS as LABEL_KEY_MAX_CHARS
from corral.wire import LABEL_KEY_RE as LABEL_KEY_RE
from corral.wire import LABEL_SELECTOR_RE as LABEL_SELECTOR_RE
from corral.wire import LABEL_VALUE_MAX_CHARS as LABEL_VALUE_MAX_CHARS
from corral.wire import LABEL_VALUE_RE as LABEL_VALUE_RE
from corral.wire import TERMINAL as TERMINAL
from corral.wire import TRANSITIONS as TRANSITIONS
from corral.wire import UNIX_USER_RE as UNIX_USER_RE
from corral.wire import USER_NAME_RE as USER_NAME_RE
from corral.wire import KeyRole as KeyRole
from corral.wire import Status as Status
from corral.wire import check_label as check_label
from corral.wire import sources_of as sources_of
from corral.wire import valid_transition as valid_transition

# --- the workload resource (spec §2) -------------------------------------------------

NAME_MAX_CHARS = 200
ENV_MAX_ENTRIES = 1024
LABELS_MAX_ENTRIES = 64
COMMAND_MAX_ARGS = 4096
ARG_MAX_CHARS = 128 * 1024 - 1
"""Per argument and per environment value: the kernel's limit per string
(``MAX_ARG_STRLEN``, 128 kB with its NUL), in characters. Text of multi-byte characters
can still pass it in bytes; the spawn then fails with the OS's "Argument list too
long"."""
PATH_MAX_CHARS = 4096
NO_NUL = r"^[^\x00]*$"
"""The OS takes argv, environment and paths as C strings: a NUL would cut them short
(or fail the spawn), so it is refused at submit. JSON cannot carry a lone surrogate,
the only other character Python could not hand the OS."""

DEPENDS_ON_MAX_ENTRIES = 100
BATCH_MAX_ITEMS = 1000
INT32_MAX = 2**31 - 1
ID_PATTERN = "^[0-9a-hjkmnp-tv-z]{26}$"


def _integral(value: Any) -> Any:
    """JSON Schema counts ``3.0`` as an integer; so do we (strict mode would not)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
"""Put last in ``Annotated[int, Field(...), INTEGRAL]``: an integer, strictly (no
strings, no booleans), also written as ``3.0``; after the constraints, so that they
still appear in the JSON schema."""

LabelKey = Annotated[
    str, StringConstraints(pattern=LABEL_KEY_RE.pattern, max_length=LABEL_KEY_MAX_CHARS)
]
LabelValue = Annotated[
    str, StringConstraints(pattern=LABEL_VALUE_RE.pattern, max_length=LABEL_VALUE_MAX_CHARS)
]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_RE.pattern, max_length=1024)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (the OS cannot take one)")
    return value


def no_nul(value: str | None) -> str | None:
    """``value``, unless it holds a NUL (``ValueError``)."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


NUL_FREE = AfterValidator(no_nul)
"""For every other text the API takes (a name, a reason, a description, an id, a
filter), with ``"pattern": NO_NUL`` in its schema: PostgreSQL's text cannot hold a
NUL (SQLite's can), so both refuse one alike (422) and the API is the same on either
database."""

OSString = Annotated[
    str,
    StringConstraints(max_length=ARG_MAX_CHARS),
    AfterValidator(_no_nul),
    Field(json_schema_extra={"pattern": NO_NUL}),
]
"""An argument or environment value: no NUL, at most ``ARG_MAX_CHARS``."""


def _keys_schema(schema: dict[str, Any]) -> None:
    """Pydantic documents constrained dict keys as ``patternProperties``, which lets
    other keys through; state them as ``propertyNames`` so the schema refuses what the
    validator refuses."""
    pattern_props = schema.pop("patternProperties", {})
    names = schema.setdefault("propertyNames", {})
    for pattern, value_schema in pattern_props.items():
        names["pattern"] = pattern
        schema["additionalProperties"] = value_schema


class Resources(BaseModel):
    """What a workload needs while it runs; all non-negative."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cpus: Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)] = 1.0
    memory_mb: Annotated[int, Field(ge=0, le=2**40), INTEGRAL] = 0
    gpus: Annotated[int, Field(ge=0, le=1024), INTEGRAL] = 0


def _dependency_ref(value: Any) -> str | int:
    """An entry of ``depends_on``: a workload id, or (in a batch) an item's index."""
    if isinstance(value, str):
        if not looks_like_id(value):
            raise ValueError(f"{value[:40]!r} is not a workload id (26 characters)")
        return value
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < BATCH_MAX_ITEMS:
            raise ValueError(f"an item index is between 0 and {BATCH_MAX_ITEMS - 1}")
        return value
    raise ValueError("must be a workload id, or (in a batch) the index of another item")


def _workload_id(value: Any) -> str:
    """An entry of ``depends_on`` outside a batch: a workload id."""
    if isinstance(value, str) and looks_like_id(value):
        return value
    if isinstance(value, str):
        raise ValueError(f"{value[:40]!r} is not a workload id (26 characters)")
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            "an integer names another item of a batch (POST /v1/workloads/batch);"
            " here give a workload id"
        )
    raise ValueError("must be a workload id")


WorkloadIdRef = Annotated[
    str,
    PlainValidator(_workload_id),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN}),
]
"""A workload id, in ``depends_on``."""

DependencyRef = Annotated[
    str | int,
    PlainValidator(_dependency_ref),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": ID_PATTERN},
                {"type": "integer", "minimum": 0, "maximum": BATCH_MAX_ITEMS - 1},
            ]
        }
    ),
]
"""A workload id, or in a batch the index of another item of the same batch."""

DependencyType = Literal["afterok", "afterany"]
"""Slurm's names: start once every dependency ``completed`` (afterok; a dependency
that fails or is killed kills the dependant), or once every one ended (afterany)."""


class WorkloadSpec(BaseModel):
    """What the user asks to run, but for ``depends_on`` (see ``WorkloadCreate`` and
    ``WorkloadBatchItem``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    command: Annotated[
        list[OSString],
        Field(
            min_length=1,
            max_length=COMMAND_MAX_ARGS,
            description="argv; command[0] is the program, looked up in PATH. No shell.",
            # In JSON Schema, ``items`` skips what ``prefixItems`` covers: command[0]
            # restates every rule of an argument besides its own (not empty).
            json_schema_extra={
                "prefixItems": [
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": ARG_MAX_CHARS,
                        "pattern": NO_NUL,
                    }
                ]
            },
        ),
    ]
    name: Annotated[
        str | None,
        Field(max_length=NAME_MAX_CHARS, json_schema_extra={"pattern": NO_NUL}),
        NUL_FREE,
    ] = None
    env: Annotated[
        dict[EnvName, OSString],
        Field(max_length=ENV_MAX_ENTRIES, json_schema_extra=_keys_schema),
    ] = Field(default_factory=dict)
    cwd: Annotated[
        str | None,
        StringConstraints(pattern=r"^/", max_length=PATH_MAX_CHARS),
        AfterValidator(lambda v: v if v is None else _no_nul(v)),
        Field(json_schema_extra={"pattern": "^/[^\\x00]*$"}),
    ] = None
    resources: Resources = Field(default_factory=Resources)
    labels: Annotated[
        dict[LabelKey, LabelValue],
        Field(max_length=LABELS_MAX_ENTRIES, json_schema_extra=_keys_schema),
    ] = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=-(2**31), le=2**31 - 1), INTEGRAL] = 0
    timeout_seconds: Annotated[
        float | None, Field(gt=0, le=10 * 365 * 86400, allow_inf_nan=False)
    ] = None
    dependency_type: DependencyType = "afterok"
    array_index: Annotated[
        int | None,
        Field(
            ge=0,
            le=INT32_MAX,
            description="The task's index in an array (the"
            " CORRAL_ARRAY_INDEX variable of its process).",
        ),
        INTEGRAL,
    ] = None

    @field_validator("command")
    @classmethod
    def _program_not_empty(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("command[0] (the program) must not be empty")
        return value


class WorkloadCreate(WorkloadSpec):
    """The body of ``POST /v1/workloads``: what the user asks to run."""

    depends_on: Annotated[
        list[WorkloadIdRef],
        Field(
            max_length=DEPENDS_ON_MAX_ENTRIES,
            description="Workloads (of the same user) that must end first.",
        ),
    ] = Field(default_factory=list)


class WorkloadBatchItem(WorkloadSpec):
    """An item of ``POST /v1/workloads/batch``: a ``WorkloadCreate`` whose
    ``depends_on`` may also name another item of the batch by its index."""

    depends_on: Annotated[
        list[DependencyRef],
        Field(
            max_length=DEPENDS_ON_MAX_ENTRIES,
            description="Workloads (of the same user) that must end first: ids, or"
            " indexes of other items of this batch.",
        ),
    ] = Field(default_factory=list)


class WorkloadBatch(BaseModel):
    """The body of ``POST /v1/workloads/batch``: workloads created all or none."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: Annotated[list[WorkloadBatchItem], Field(min_length=1, max_length=BATCH_MAX_ITEMS)]
    max_running: Annotated[
        int | None,
        Field(ge=1, le=INT32_MAX, description="At most this many of them run at once."),
        INTEGRAL,
    ] = None


def check_batch_references(items: Sequence[WorkloadBatchItem]) -> None:
    """The integer entries of the items' ``depends_on`` name other items: each must
    be within the batch and not the item itself, and together they must not form a
    cycle; else ``FieldError`` at the first entry at fault (``items[3].depends_on[0]``).
    """
    edges: list[list[tuple[int, int]]] = []  # item -> [(entry, item it names)]
    for i, item in enumerate(items):
        edges.append([])
        for j, ref in enumerate(item.depends_on):
            if not isinstance(ref, int):
                continue
            loc = ("items", i, "depends_on", j)
            if ref >= len(items):
                raise FieldError(
                    loc, f"no item {ref} in this batch (its items are 0 to {len(items) - 1})"
                )
            if ref == i:
                raise FieldError(loc, "an item cannot depend on itself")
            edges[i].append((j, ref))
    # Depth-first, without recursion: 0 unseen, 1 on the current path, 2 done.
    state = [0] * len(items)
    for root in range(len(items)):
        if state[root]:
            continue
        path: list[tuple[int, int]] = [(root, 0)]  # (item, next edge to follow)
        state[root] = 1
        while path:
            node, k = path[-1]
            if k == len(edges[node]):
                state[node] = 2
                path.pop()
                continue
            path[-1] = (node, k + 1)
            j, target = edges[node][k]
            if state[target] == 1:
                cycle = [n for n, _ in path[[n for n, _ in path].index(target) :]]
                loop = " -> ".join(map(str, [*cycle, target]))
                raise FieldError(
                    ("items", node, "depends_on", j), f"a dependency cycle: items {loop}"
                )
            if state[target] == 0:
                state[target] = 1
                path.append((target, 0))


class Workload(BaseModel):
    """A stored workload: the user's spec plus what corral knows about it."""

    id: str
    owner: str
    """The user whose key submitted it; only they and admins see it."""
    name: str | None
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    resources: Resources
    labels: dict[str, str]
    priority: int
    timeout_seconds: float | None
    # Defaults: the fields of issue 9 are absent from an older server's JSON and from
    # workloads built without them.
    depends_on: list[str] = Field(default_factory=list)
    """Ids of the workloads it waits for."""
    dependency_type: DependencyType = "afterok"
    array_index: int | None = None
    batch_id: str | None = None
    """The batch request that created it (``POST /v1/workloads/batch``), else None."""
    max_running: int | None = None
    """Its batch's limit of workloads running at once (None: no limit)."""
    status: Status
    exit_code: int | None
    signal: str | None
    reason: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    node: str | None = Field(
        default=None,
        description="The machine it runs (or ran) on: the server's host name for the local"
        " executor, the Ray node id for the Ray executor; null until it starts.",
    )
    stopping: bool = Field(
        default=False,
        description="corral is stopping the workload's process, which has not exited yet:"
        " killed (or set terminal) and in its grace period, or timed out and being stopped"
        " (still `running` until it exits). In answers only; never stored.",
    )


class Event(BaseModel):
    """One entry of a workload's history: ``created``, then one per status change."""

    seq: int
    type: str
    from_status: Status | None
    to_status: Status
    at: str
    reason: str | None
    actor: str | None


class TransitionEvent(BaseModel):
    """One event of the live feed (``GET /v1/events``): an ``Event`` with its global
    ``id`` (the order of the feed, and what ``Last-Event-ID`` resumes after), its
    workload's id, name and labels."""

    id: int
    workload_id: str
    seq: int
    type: str
    from_status: Status | None
    to_status: Status
    at: str
    reason: str | None
    actor: str | None
    name: str | None
    labels: dict[str, str]


def _when_status(statuses: list[JsonValue], exit_code: JsonDict) -> JsonDict:
    return {
        "if": {"properties": {"status": {"enum": statuses}}},
        "then": {"properties": {"exit_code": exit_code}},
    }


_EXIT_CODE_FITS_STATUS_SCHEMA: list[JsonValue] = [  # StatusUpdate._exit_code_fits_status
    _when_status(["pending", "running"], {"type": "null"}),
    _when_status(["completed"], {"enum": [0, None]}),
    _when_status(["failed"], {"not": {"const": 0}}),
]


class StatusUpdate(BaseModel):
    """The body of ``PUT /v1/workloads/{id}/status``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"allOf": _EXIT_CODE_FITS_STATUS_SCHEMA},
    )

    status: Status
    exit_code: Annotated[int | None, Field(ge=-(2**31), le=2**31 - 1), INTEGRAL] = None
    reason: Annotated[
        str | None, Field(max_length=1000, json_schema_extra={"pattern": NO_NUL}), NUL_FREE
    ] = None

    @model_validator(mode="after")
    def _exit_code_fits_status(self) -> Self:
        """An exit code says how a process ended: none before it ends, 0 for completed
        and never 0 for failed (as the local executor records them)."""
        code, status = self.exit_code, self.status
        if code is None:
            return self
        if status not in TERMINAL:
            raise ValueError(f"a {status} workload has no exit_code yet")
        if status is Status.COMPLETED and code != 0:
            raise ValueError(f"completed means exit code 0; exit code {code} is failed")
        if status is Status.FAILED and code == 0:
            raise ValueError("exit code 0 is completed, not failed")
        return self


# --- users and API keys (spec §6) ---------------------------------------------------

UserName = Annotated[str, StringConstraints(pattern=USER_NAME_RE.pattern)]


_ONE_ROLE_SCHEMA: list[JsonValue] = [  # TokenCreate._one_role
    {
        "if": {"properties": {"admin": {"const": True}}, "required": ["admin"]},
        "then": {"properties": {"role": {"enum": ["admin", None]}}},
    },
    {
        "if": {"properties": {"admin": {"const": False}}, "required": ["admin"]},
        "then": {"properties": {"role": {"enum": ["user", "metrics", None]}}},
    },
    {
        "if": {"properties": {"role": {"const": "metrics"}}, "required": ["role"]},
        "then": {"properties": {"unix_user": {"type": "null"}}},
    },
]


class TokenCreate(BaseModel):
    """The body of ``POST /v1/tokens`` (admin keys only)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"allOf": _ONE_ROLE_SCHEMA}
    )

    user: UserName
    admin: bool = False
    """``true``: an admin key (as ``"role": "admin"``)."""
    role: KeyRole | None = None
    """``user``, ``admin`` or ``metrics`` (may only ``GET /metrics``); default from
    ``admin``."""
    unix_user: Annotated[str | None, StringConstraints(pattern=UNIX_USER_RE.pattern)] = None
    """Run this user's workloads as this Unix account (the server must run as root)."""
    description: Annotated[
        str | None, Field(max_length=200, json_schema_extra={"pattern": NO_NUL}), NUL_FREE
    ] = None

    @model_validator(mode="after")
    def _one_role(self) -> Self:
        if self.admin and self.role not in (None, KeyRole.ADMIN):
            raise ValueError(f'"admin": true and "role": "{self.role}" disagree: give one')
        if "admin" in self.model_fields_set and not self.admin and self.role is KeyRole.ADMIN:
            raise ValueError('"admin": false and "role": "admin" disagree: give one')
        if self.role is KeyRole.METRICS and self.unix_user is not None:
            raise ValueError("a metrics key runs no workloads: it takes no unix_user")
        return self

    @property
    def key_role(self) -> KeyRole:
        """The role asked for (``role``, else from ``admin``)."""
        return role_of(self.admin, self.role)


def role_of(admin: bool, role: KeyRole | str | None) -> KeyRole:
    """A key's role: ``role``, else ``admin`` or ``user`` by ``admin``; ``ValueError``
    when both are given and disagree."""
    if role is None:
        return KeyRole.ADMIN if admin else KeyRole.USER
    role = KeyRole(role)
    if admin and role is not KeyRole.ADMIN:
        raise ValueError(f"an admin key cannot have the role {role.value!r}")
    return role


class Token(BaseModel):
    """An API key as listed: never the key itself, which only its creation returns."""

    id: str
    user: str
    admin: bool
    """Derived from ``role``: ``role == "admin"``."""
    role: KeyRole
    """What the key may do: ``user`` (its user's workloads), ``admin`` (everything),
    ``metrics`` (``GET /metrics`` only)."""
    unix_user: str | None
    description: str | None
    created_at: str
    revoked_at: str | None


class NewToken(Token):
    """The answer to ``POST /v1/tokens``: the key, shown this once."""

    key: str


def default_reason(status: Status, exit_code: int | None) -> str | None:
    """The reason recorded when the caller of a status change gives none."""
    if status is Status.KILLED:
        return "killed by request"
    if exit_code is not None:
        return f"exit code {exit_code}"
    return None


def transitions_as_data() -> dict[str, list[str]]:
    """The state machine as JSON-ready data, targets sorted."""
    return {str(s): sorted(str(t) for t in targets) for s, targets in TRANSITIONS.items()}


def workload_from_row(row: dict[str, Any]) -> Workload:
    """Build a ``Workload`` from stored values. (Pydantic's validator, in Rust, is about
    three times faster than ``model_construct``, so stored rows are validated too.)"""
    return Workload.model_validate(row)
