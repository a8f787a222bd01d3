"""``corral.wire``: the answers as the light client reads them. An old server's
answer (without issue 9's fields) and a newer one's (with fields this client does not
know) both read; a malformed one raises ``WireError`` naming the field; and the server's
own pydantic models send nothing the client would drop."""

from __future__ import annotations

from typing import Any

import pytest

from corral import model, wire
from corral.wire import (
    Capacity,
    Event,
    KillResult,
    NewToken,
    Page,
    Resources,
    ServerStatus,
    Status,
    Token,
    WireError,
    Workload,
)
from tests.scripted import token_body, workload_body


def test_an_old_server_s_workload_reads_with_the_new_fields_defaulted() -> None:
    w = Workload.from_json(workload_body())
    assert (w.id, w.owner, w.status, w.command) == ("w1", "alice", Status.PENDING, ["true"])
    assert w.resources == Resources(cpus=1.0, memory_mb=0, gpus=0)
    assert (w.depends_on, w.dependency_type, w.array_index) == ([], "afterok", None)
    assert (w.batch_id, w.max_running, w.stopping) == (None, None, False)


def test_new_fields_are_read_and_unknown_ones_ignored() -> None:
    body = workload_body(
        depends_on=["01a", "01b"],
        dependency_type="afterany",
        array_index=3,
        batch_id="b1",
        max_running=4,
        stopping=True,
        status="killed",
        exit_code=-15,
        timeout_seconds=90,
        resources={"cpus": 2, "memory_mb": 512.0, "gpus": 1, "tpus": 8},
        from_the_future={"x": 1},
    )
    w = Workload.from_json(body)
    assert (w.depends_on, w.dependency_type, w.array_index) == (["01a", "01b"], "afterany", 3)
    assert (w.batch_id, w.max_running, w.stopping) == ("b1", 4, True)
    assert (w.status, w.exit_code, w.timeout_seconds) == (Status.KILLED, -15, 90.0)
    assert w.resources == Resources(cpus=2.0, memory_mb=512, gpus=1)
    assert type(w.resources.cpus) is float and type(w.resources.memory_mb) is int
    assert not hasattr(w, "from_the_future")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": 7}, "workload.id: expected a string, got 7"),
        ({"status": "sleeping"}, "workload.status: expected a status (pending, running,"),
        ({"command": "true"}, "workload.command: expected a list of strings, got 'true'"),
        ({"env": {"A": 1}}, "workload.env: expected an object of strings"),
        ({"priority": True}, "workload.priority: expected an integer, got True"),
        ({"priority": 1.5}, "workload.priority: expected an integer, got 1.5"),
        ({"resources": {"cpus": "1"}}, "workload.resources.cpus: expected a number, got '1'"),
        ({"resources": None}, "workload.resources: expected an object, got None"),
        ({"stopping": "no"}, "workload.stopping: expected true or false, got 'no'"),
        ({"depends_on": [1]}, "workload.depends_on: expected a list of strings"),
    ],
)
def test_a_malformed_workload_names_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(WireError) as info:
        Workload.from_json(workload_body(**change))
    assert str(info.value).startswith(message)


def test_a_missing_field_and_a_non_object_are_named() -> None:
    body = workload_body()
    del body["owner"]
    with pytest.raises(WireError, match=r"^workload\.owner: missing$"):
        Workload.from_json(body)
    del body["resources"]
    body["owner"] = "alice"
    with pytest.raises(WireError, match=r"^workload\.resources: missing$"):
        Workload.from_json(body)
    with pytest.raises(WireError, match=r"^workload: expected an object, got \[\]$"):
        Workload.from_json([])  # type: ignore[arg-type]
    with pytest.raises(WireError, match=r"^page\.items\[1\]\.id: expected a string"):
        Page.from_json({"items": [workload_body(), workload_body(id=None)], "next_cursor": None})


def test_answers_are_frozen_and_compare_by_value() -> None:
    w = Workload.from_json(workload_body())
    assert w == Workload.from_json(workload_body())
    assert w != Workload.from_json(workload_body(stopping=True))
    with pytest.raises(AttributeError, match="frozen"):
        w.status = Status.KILLED  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del w.status  # type: ignore[misc]
    assert w.as_dict()["resources"] == {"cpus": 1.0, "memory_mb": 0, "gpus": 0}
    assert w.as_dict()["status"] == "pending" and "Workload(id=" in repr(w)
    assert Resources() == Resources(1.0, 0, 0) == Resources(cpus=1.0)
    with pytest.raises(TypeError):
        Resources(1.0, 0, 0, 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Resources(cpu=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Capacity(1.0)  # type: ignore[call-arg]
    a = Workload(**{**w.as_dict(), "resources": w.resources, "status": w.status})
    b = Workload(**{**w.as_dict(), "resources": w.resources, "status": w.status})
    del_deps = {k: v for k, v in w.as_dict().items() if k != "depends_on"}
    c = Workload(**{**del_deps, "resources": w.resources, "status": w.status})
    assert (
        a == b == c and c.depends_on == [] and c.depends_on is not Workload._defaults["depends_on"]
    )


def test_tokens_events_pages_kill_results_and_status() -> None:
    assert Token.from_json(token_body()) == Token(**token_body())  # type: ignore[arg-type]
    new = NewToken.from_json(token_body(key="corral_secret"))
    assert isinstance(new, Token) and new.key == "corral_secret"
    assert "corral_secret" not in repr(new)
    with pytest.raises(WireError, match=r"^token\.key: missing$"):
        NewToken.from_json(token_body())
    old = {k: v for k, v in token_body(admin=True).items() if k != "role"}  # before 0006
    assert Token.from_json(old).role == "admin"
    assert Token.from_json({**old, "admin": False}).role == "user"
    assert Token.from_json(token_body(role="metrics")).role == "metrics"
    with pytest.raises(WireError, match=r"^token\.role: expected a string"):
        Token.from_json(token_body(role=1))

    event = Event.from_json(
        {"seq": 1, "type": "created", "from_status": None, "to_status": "pending",
         "at": "t", "reason": None, "actor": "alice"}
    )  # fmt: skip
    assert (event.from_status, event.to_status) == (None, Status.PENDING)

    page = Page.from_json({"items": [workload_body()], "next_cursor": "", "total": 12})
    assert (len(page.items), page.next_cursor, page.total) == (1, None, 12)
    assert Page.from_json({"items": [], "next_cursor": "c2"}).total is None

    result = KillResult.from_json(
        {
            "killed": [workload_body(status="killed")],
            "not_killed": [{"id": "w2", "status": "completed", "detail": "already ended"}],
            "not_found": ["w3"],
        }
    )
    assert [w.status for w in result.killed] == [Status.KILLED]
    assert result.not_killed == [wire.NotKilled("w2", Status.COMPLETED, "already ended")]
    assert result.not_found == ["w3"]

    amounts = {"cpus": 4, "memory_mb": 8192, "gpus": 0}
    queued = {"id": "w1", "name": None, "owner": "alice", "resources": amounts,
              "priority": 0, "reason": "waiting for 4 CPUs"}  # fmt: skip
    status = ServerStatus.from_json(
        {"executor": "local", "capacity": amounts, "used": amounts, "free": amounts,
         "counts": {"pending": 1, "running": 0}, "queue": [queued], "queue_length": 1}
    )  # fmt: skip
    assert status.capacity == wire.Capacity(4.0, 8192, 0)
    assert status.counts == {"pending": 1, "running": 0}
    assert status.queue[0].reason == "waiting for 4 CPUs"
    with pytest.raises(WireError, match=r"^status\.free: missing$"):
        ServerStatus.from_json(
            {"executor": "none", "capacity": amounts, "used": amounts, "counts": {}}
        )


def test_the_state_machine_and_syntax_are_stated_once() -> None:
    """``model`` (the server) re-exports ``wire``'s objects, not copies of them."""
    for name in (
        "Status", "TRANSITIONS", "TERMINAL", "valid_transition", "sources_of",
        "check_label", "LABEL_KEY_RE", "LABEL_VALUE_RE", "LABEL_SELECTOR_RE",
        "ENV_NAME_RE", "USER_NAME_RE", "UNIX_USER_RE",
    ):  # fmt: skip
        assert getattr(model, name) is getattr(wire, name), name
    assert {Status.COMPLETED, Status.FAILED, Status.KILLED} == wire.TERMINAL
    assert wire.valid_transition("pending", "running")
    assert not wire.valid_transition("completed", "running")
    assert not wire.valid_transition("nonsense", "running")
    assert wire.sources_of(Status.KILLED) == {Status.PENDING, Status.RUNNING}
    wire.check_label("example.com/team", "ml")
    with pytest.raises(ValueError, match="label key 'bad key' is invalid"):
        wire.check_label("bad key", "x")


@pytest.mark.parametrize(
    ("server", "client"),
    [
        (model.Workload, Workload),
        (model.Event, Event),
        (model.Token, Token),
        (model.NewToken, NewToken),
        (model.Resources, Resources),
    ],
)
def test_the_client_reads_every_field_the_server_sends(server: Any, client: Any) -> None:
    """A field added to the server's model and not to ``wire`` would be dropped by the
    client without a word: this fails instead."""
    sent = set(server.model_fields)
    read = set(client._fields)
    assert sent <= read, f"{client.__name__} misses {sorted(sent - read)}"


def test_a_server_workload_reads_back_field_for_field() -> None:
    created = model.WorkloadCreate.model_validate(
        {"command": ["echo", "hi"], "labels": {"team": "ml"}, "resources": {"cpus": 0.5}}
    )
    now = "2024-01-01T00:00:00Z"
    stored = model.Workload(
        id="01abc", owner="alice", status=Status.RUNNING, exit_code=None, signal=None,
        reason=None, created_at=now, updated_at=now, started_at=now, finished_at=None,
        **created.model_dump(),
    )  # fmt: skip
    sent = stored.model_dump(mode="json")
    read = Workload.from_json(sent).as_dict()
    assert {k: read[k] for k in sent} == sent
