"""``corral.Client`` against a real ``corral serve --executor none``: workloads move only
when the test moves them with ``PUT /v1/workloads/{id}/status``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import (
    APIError,
    Client,
    CorralClientError,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    NotFound,
    RateLimited,
    ServerError,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
)
from corral.client import error_from_response
from corral.wire import Event, Status, Workload
from tests.server import LiveServer, free_port

UNKNOWN_ID = "01aaaaaaaaaaaaaaaaaaaaaaaa"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("client"), "--executor", "none").start()
    yield live
    live.kill()


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, token=server.token) as c:
        yield c


def put_status(server: LiveServer, workload_id: str, status: str, **extra: object) -> None:
    r = httpx.put(
        f"{server.url}/v1/workloads/{workload_id}/status",
        json={"status": status, **extra},
        headers=server.headers,
    )
    assert r.status_code == 200, r.text


def later(delay: float, *steps: tuple[LiveServer, str, str, dict[str, object]]) -> threading.Thread:
    """Apply status changes from a thread after ``delay`` seconds."""

    def run() -> None:
        time.sleep(delay)
        for srv, wid, status, extra in steps:
            put_status(srv, wid, status, **extra)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_submit_returns_the_stored_workload(client: Client, tmp_path: Path) -> None:
    w = client.submit(
        ["python", "-c", "print(1)"],
        name="train",
        env={"A": "1"},
        cwd=str(tmp_path),
        cpus=0.5,
        memory_mb=64,
        labels={"team": "ml"},
        priority=5,
        timeout_seconds=30,
    )
    assert isinstance(w, Workload)
    assert w.status is Status.PENDING
    assert (w.name, w.env, w.cwd, w.labels) == ("train", {"A": "1"}, str(tmp_path), {"team": "ml"})
    assert (w.resources.cpus, w.resources.memory_mb, w.resources.gpus) == (0.5, 64, 0)
    assert (w.priority, w.timeout_seconds) == (5, 30)
    assert client.get(w.id) == w
    events = client.events(w.id)
    assert all(isinstance(e, Event) for e in events)
    assert [(e.type, e.to_status) for e in events] == [("created", Status.PENDING)]


def test_unset_fields_take_server_defaults(client: Client) -> None:
    w = client.submit(["true"])
    assert (w.name, w.env, w.cwd, w.labels, w.priority, w.timeout_seconds) == (
        None,
        {},
        None,
        {},
        0,
        None,
    )
    assert (w.resources.cpus, w.resources.memory_mb, w.resources.gpus) == (1.0, 0, 0)
    assert client.submit(["true"], gpus=0).resources.cpus == 1.0


def test_submit_refuses_a_string_command(client: Client) -> None:
    with pytest.raises(TypeError):
        client.submit("echo hi")


def test_idempotency_key_replays_and_refuses_another_body(client: Client) -> None:
    key = str(uuid.uuid4())
    first = client.submit(["echo", "once"], idempotency_key=key)
    assert client.submit(["echo", "once"], idempotency_key=key).id == first.id
    with pytest.raises(InvalidInput) as info:
        client.submit(["echo", "twice"], idempotency_key=key)
    assert info.value.status == 422
    assert info.value.slug == "idempotency-key-reused"


def test_list_iterates_across_pages(client: Client, server: LiveServer) -> None:
    batch = {"batch": uuid.uuid4().hex}
    ids = [client.submit(["true"], labels=batch).id for _ in range(7)]
    listed = list(client.list(labels=batch, page_size=2))
    assert [w.id for w in listed] == ids[::-1]  # newest first, each once
    assert all(isinstance(w, Workload) for w in listed)
    assert [w.id for w in client.list(labels=batch, page_size=2, limit=3)] == ids[:-4:-1]
    assert [w.id for w in client.list(labels=batch, limit=5)] == ids[:-6:-1]
    assert list(client.list(labels=batch, limit=0)) == []

    for wid in ids[:3]:
        put_status(server, wid, "running")
    put_status(server, ids[0], "completed")
    running = client.list(labels=batch, status=["running"], page_size=1)
    assert [w.id for w in running] == [ids[2], ids[1]]
    either = client.list(labels=batch, status=[Status.RUNNING, Status.COMPLETED])
    assert {w.id for w in either} == set(ids[:3])


def test_kill_then_kill_again(client: Client) -> None:
    w = client.submit(["sleep", "60"])
    killed = client.kill(w.id)
    assert killed.status is Status.KILLED
    assert killed.reason == "killed by request"
    with pytest.raises(InvalidTransition) as info:
        client.kill(w.id)
    exc = info.value
    assert exc.status == 409
    assert exc.current_status is Status.KILLED
    assert exc.requested_status is Status.KILLED
    assert exc.allowed == []
    assert str(exc) == exc.detail
    assert exc.problem["type"] == "urn:corral:problem:invalid-transition"


def test_unknown_workload_is_not_found(client: Client) -> None:
    for call in (client.get, client.events, client.kill, client.logs):
        with pytest.raises(NotFound) as info:
            call(UNKNOWN_ID)
        assert info.value.status == 404
        assert UNKNOWN_ID in str(info.value)
    with pytest.raises(NotFound):
        list(client.follow_logs(UNKNOWN_ID))


def test_bad_labels_are_invalid_input(client: Client) -> None:
    with pytest.raises(InvalidInput) as info:
        client.submit(["true"], labels={"bad key": "x"})
    assert info.value.status == 422
    assert info.value.problem["errors"]
    assert "labels" in str(info.value)
    with pytest.raises(InvalidInput):
        list(client.list(labels={"bad key": "x"}))
    with pytest.raises(InvalidInput):
        list(client.list(status=["sleeping"]))


def test_oversized_body_is_invalid_input(client: Client) -> None:
    with pytest.raises(InvalidInput) as info:
        client.submit(["echo", "x" * (2 << 20)])
    assert info.value.status == 413


def test_wait_returns_the_terminal_workload(client: Client, server: LiveServer) -> None:
    w = client.submit(["false"])
    seen: list[Status] = []
    thread = later(
        0.3,
        (server, w.id, "running", {}),
        (server, w.id, "failed", {"exit_code": 3}),
    )
    done = client.wait(w.id, timeout=30, on_update=lambda x: seen.append(x.status))
    thread.join()
    assert (done.status, done.exit_code, done.reason) == (Status.FAILED, 3, "exit code 3")
    assert seen[0] is Status.PENDING and seen[-1] is Status.FAILED
    assert client.wait(w.id).status is Status.FAILED  # already terminal: at once


def test_wait_times_out(client: Client) -> None:
    w = client.submit(["sleep", "60"])
    updates: list[Workload] = []
    start = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        client.wait(w.id, timeout=0.5, on_update=updates.append)
    took = time.monotonic() - start
    assert 0.5 <= took < 5
    assert info.value.workload.status is Status.PENDING
    assert w.id in str(info.value)
    assert len(updates) >= 3  # backing off from 0.05 s
    assert isinstance(info.value, CorralClientError)


def test_logs_of_a_workload_without_output(client: Client, server: LiveServer) -> None:
    w = client.submit(["true"])
    assert client.logs(w.id) == ""
    assert client.log_bytes(w.id, tail=10) == b""
    thread = later(0.3, (server, w.id, "running", {}), (server, w.id, "completed", {}))
    assert b"".join(client.follow_logs(w.id)) == b""  # ends when the workload does
    thread.join()


def test_server_unreachable_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=5) as client, pytest.raises(ServerUnreachable) as info:
        client.get(UNKNOWN_ID)
    message = str(info.value)
    assert url in message
    assert "corral serve" in message
    assert "connection refused" in message


def test_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_URL", "http://127.0.0.1:9999/")
    assert Client().url == "http://127.0.0.1:9999"
    monkeypatch.delenv("CORRAL_URL")
    assert Client().url == "http://127.0.0.1:8765"
    assert Client("localhost:1234").url == "http://localhost:1234"
    with pytest.raises(CorralClientError):
        Client("ftp://example.com")


def problem_response(status: int, body: object = None, text: str | None = None) -> APIError:
    """The client's error for an answer of ``status`` with a JSON ``body`` or ``text``."""
    payload = text.encode() if text is not None else json.dumps(body).encode()
    return error_from_response(status, payload)


def test_errors_map_on_the_problem_type_then_the_status() -> None:
    by_type = problem_response(
        409,
        {
            "type": "urn:corral:problem:invalid-transition",
            "title": "Conflict",
            "status": 409,
            "detail": "cannot move",
            "current_status": "completed",
            "requested_status": "killed",
            "allowed": [],
        },
    )
    assert isinstance(by_type, InvalidTransition)
    assert by_type.current_status is Status.COMPLETED
    assert str(by_type) == "cannot move"
    reused = {"type": "urn:corral:problem:idempotency-key-reused", "detail": "reused"}
    assert type(problem_response(422, reused)) is InvalidInput
    assert type(problem_response(413, {"detail": "big"})) is InvalidInput
    assert type(problem_response(404, text="nope")) is NotFound
    plain = problem_response(502, text="<html>Bad gateway</html>")
    assert type(plain) is ServerError
    assert plain.status == 502
    assert plain.detail == "HTTP 502 Bad Gateway: <html>Bad gateway</html>"
    assert str(plain).startswith("HTTP 502 Bad Gateway: <html>Bad gateway</html> (")
    assert problem_response(500, text="").detail == "HTTP 500 Internal Server Error"
    assert type(problem_response(418, text="teapot")) is APIError
    assert type(problem_response(401, {"detail": "no"})) is Unauthorized
    assert type(problem_response(403, {"detail": "no"})) is Forbidden
    assert type(problem_response(429, {"detail": "no"})) is RateLimited
    assert error_from_response(503, b"", reason="Gone Fishing").detail == "HTTP 503 Gone Fishing"
    assert error_from_response(429, b"{}", retry_after_header="3").retry_after == 3


def test_import_corral_stays_cheap() -> None:
    code = (
        "import sys, corral\n"
        "assert 'httpx' not in sys.modules and 'corral.client' not in sys.modules\n"
        "from corral import Client, NotFound\n"
        "assert Client.__module__ == 'corral.client'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_package_exports_exactly_the_client_s_names_lazily() -> None:
    """``corral`` repeats the client's ``__all__`` (it must not import the client at
    start-up): the two lists must agree, and ``import corral`` must stay light."""
    import corral
    import corral.client

    assert set(corral.__all__) - {"__version__"} == set(corral.client.__all__)
    for name in corral.client.__all__:
        assert getattr(corral, name) is getattr(corral.client, name)
    code = "import sys, corral; print('corral.client' in sys.modules, 'httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
