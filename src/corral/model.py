"""The server's data types (pydantic): request bodies and stored resources.

The state machine (``Status``, ``TRANSITIONS``, ``TERMINAL``) and the syntax of labels,
environment and user names are stated in ``corral.wire`` (standard library only, for
the light client) and re-exported here, so everything else (the store's guard, the
API's 409 bodies, ``GET /v1/transitions``) may read them from either. This module
knows nothing of HTTP, SQL or processes.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

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


class WorkloadCreate(BaseModel):
    """The body of ``POST /v1/workloads``: what the user asks to run."""

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
    name: Annotated[str | None, Field(max_length=NAME_MAX_CHARS)] = None
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

    @field_validator("command")
    @classmethod
    def _program_not_empty(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("command[0] (the program) must not be empty")
        return value


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
    status: Status
    exit_code: int | None
    signal: str | None
    reason: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
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
    reason: Annotated[str | None, Field(max_length=1000)] = None

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


class TokenCreate(BaseModel):
    """The body of ``POST /v1/tokens`` (admin keys only)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user: UserName
    admin: bool = False
    unix_user: Annotated[str | None, StringConstraints(pattern=UNIX_USER_RE.pattern)] = None
    """Run this user's workloads as this Unix account (the server must run as root)."""
    description: Annotated[str | None, Field(max_length=200)] = None


class Token(BaseModel):
    """An API key as listed: never the key itself, which only its creation returns."""

    id: str
    user: str
    admin: bool
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
