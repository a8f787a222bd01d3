"""``GET /v1/events`` on a real ``corral serve`` running real processes, on each
database: pages, the event stream, resuming with ``Last-Event-ID`` across a
disconnect and a restart, and what another user may not see."""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.pg_server import PgServer

from corral.client import Client, CorralClientError, ServerUnreachable
from corral.executors.local import kill_all
from tests.server import LiveServer, wait_until


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    kill_all(tmp_path / "data" / "run")


def serve(data: Path, serve_db: list[str], port: int | None = None) -> LiveServer:
    return LiveServer(data, "--executor", "local", *serve_db, port=port).start()


def user_key(server: LiveServer, user: str) -> str:
    with server.http() as admin:
        response = admin.post("/v1/tokens", json={"user": user})
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


ENDS = ("completed", "failed")


def run_to_the_end(http: httpx.Client, count: int, **body: Any) -> list[str]:
    """``count`` workloads that end at once, waited for: 3 events each (a user's
    without a Unix account fail to spawn when the server runs as root)."""
    ids = []
    for _ in range(count):
        response = http.post("/v1/workloads", json={"command": ["true"], **body})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    for wid in ids:
        wait_until(lambda w=wid: http.get(f"/v1/workloads/{w}").json()["status"] in ENDS)
    return ids


def page(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def read_stream(
    http: httpx.Client,
    count: int,
    *,
    last_event_id: int | None = None,
    params: dict[str, Any] | None = None,
    connected: threading.Event | None = None,
    into: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The first ``count`` events of a stream (appended to ``into`` as they come),
    then disconnect. Each message's ``id:`` is its data's id; its ``event:`` is
    ``transition``."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events: list[dict[str, Any]] = [] if into is None else into
    fields: dict[str, str] = {}
    query = {"follow": "true", **(params or {})}
    with http.stream("GET", "/v1/events", params=query, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        if connected is not None:
            connected.set()
        for line in response.iter_lines():
            if line.startswith(":"):
                continue  # a comment: the keep-alive
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if not fields:
                continue
            assert fields["event"] == "transition"
            event = json.loads(fields["data"])
            assert int(fields["id"]) == event["id"]
            events.append(event)
            fields = {}
            if len(events) == count:
                break
    return events


def test_a_client_that_resumes_gets_every_event_once_also_across_a_restart(
    data: Path, serve_db: list[str]
) -> None:
    server = serve(data, serve_db)
    alice_key, bob_key = user_key(server, "alice"), user_key(server, "bob")
    alice, bob = server.http(token=alice_key), server.http(token=bob_key)
    run_to_the_end(alice, 2, labels={"team": "ml"})
    run_to_the_end(bob, 1)
    seen = read_stream(alice, 4)  # part of the 6 of alice's: then the client goes
    run_to_the_end(alice, 1)
    run_to_the_end(bob, 1)
    seen += read_stream(alice, 5, last_event_id=seen[-1]["id"])

    server.kill()  # and a new one on the same data (the same port: the same URL)
    server = serve(data, serve_db, port=server.port)
    alice, bob = server.http(token=alice_key), server.http(token=bob_key)
    connected = threading.Event()
    later: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: later.extend(
            read_stream(alice, 3, last_event_id=seen[-1]["id"], connected=connected)
        )
    )
    reader.start()
    assert connected.wait(30)
    run_to_the_end(bob, 1)
    run_to_the_end(alice, 1)  # while the stream waits: the broadcast wakes it
    reader.join(60)
    assert not reader.is_alive()
    seen += later

    with server.http() as admin:
        everyone = page(admin)["items"]
    truth = [e for e in everyone if e["workload_id"] in {s["workload_id"] for s in seen}]
    assert len({e["workload_id"] for e in everyone}) == 7  # bob's 3 are there too
    assert seen == truth  # alice's 12 events, each once, in order, bob's none
    assert len(seen) == 12 and seen[0]["seq"] == 1
    assert seen[0]["labels"] == {"team": "ml"} and seen[-1]["to_status"] in ENDS
    assert page(alice)["items"] == truth
    alice.close()
    bob.close()
    server.kill()


def test_pages_filter_and_carry_the_cursor_past_what_they_skip(
    data: Path, serve_db: list[str]
) -> None:
    with serve(data, serve_db) as server, server.http() as admin:
        ml = run_to_the_end(admin, 1, labels={"team": "ml"}, name="a")
        web = run_to_the_end(admin, 1, labels={"team": "web"})
        every = page(admin)
        assert [e["workload_id"] for e in every["items"]] == [ml[0]] * 3 + [web[0]] * 3
        assert every["last_id"] == every["items"][-1]["id"]
        first = page(admin, limit=2)
        assert first["items"] == every["items"][:2]
        assert page(admin, after=first["last_id"])["items"] == every["items"][2:]
        only_web = page(admin, label="team=web")
        assert only_web["items"] == every["items"][3:]
        running = page(admin, status="running", workload=[ml[0], web[0]])
        assert [e["to_status"] for e in running["items"]] == ["running", "running"]
        # Nothing of team=ml after ml's last event, but the cursor moves past web's.
        assert page(admin, label="team=ml", after=every["items"][2]["id"]) == {
            "items": [],
            "last_id": every["last_id"],
        }
        assert read_stream(admin, 1, params={"status": list(ENDS), "label": "team=web"}) == [
            every["items"][5]
        ]


BAD_INPUT = [
    ({"after": "-1"}, {}, "after"),
    ({"after": "x"}, {}, "after"),
    ({"after": str(2**63)}, {}, "after"),
    ({}, {"Last-Event-ID": str(2**63)}, "Last-Event-ID"),
    ({"label": "team"}, {}, "team"),
    ({"status": "done"}, {}, "status"),
    ({"workload": "nope"}, {}, "nope"),
    ({"limit": "501"}, {}, "limit"),
    ({"follow": "true"}, {"Last-Event-ID": "ten"}, "Last-Event-ID"),
    ({}, {"Last-Event-ID": "-3"}, "Last-Event-ID"),
    ({}, {"Last-Event-ID": "1_000"}, "Last-Event-ID"),
    ({}, {"Last-Event-ID": "+5"}, "Last-Event-ID"),
    ({"after": "3"}, {"Last-Event-ID": "0x10"}, "Last-Event-ID"),
]


def test_bad_input_is_a_4xx_naming_it(data: Path, serve_db: list[str]) -> None:
    with serve(data, serve_db) as server, server.http() as admin:
        for params, headers, names in BAD_INPUT:
            response = admin.get("/v1/events", params=params, headers=headers)
            assert response.status_code == 422, response.text
            assert names in response.text, response.text
        response = admin.get("/v1/events", headers={"Last-Event-ID": "9" * 5000})
        assert response.status_code == 422
        assert "Last-Event-ID '99999" in response.text and len(response.text) < 1000


def test_last_event_id_wins_over_after_as_an_event_source_reconnects(
    data: Path, serve_db: list[str]
) -> None:
    """An EventSource reconnects to the URL it opened (``?after=`` and all) with the
    last id it got as ``Last-Event-ID``: that is where it resumes, not ``after``."""
    with serve(data, serve_db) as server, server.http() as admin:
        run_to_the_end(admin, 1)
        every = page(admin)["items"]
        assert len(every) == 3
        resumed = read_stream(admin, 1, last_event_id=every[1]["id"], params={"after": 0})
        assert resumed == every[2:]
        assert page(admin, after=0, limit=1)["items"] == every[:1]
        got = admin.get("/v1/events", params={"after": 0}, headers={"Last-Event-ID": "0"})
        assert got.json()["items"] == every


def test_client_watch_reconnects_across_a_restart_and_the_cli_prints_each_event(
    data: Path, serve_db: list[str]
) -> None:
    server = serve(data, serve_db)
    key = (data / "token").read_text().strip()
    with server.http() as admin:
        first = run_to_the_end(admin, 1, name="one")
    got: list[Any] = []
    client = Client(server.url, token=key, timeout=5)

    def watch() -> None:
        for event in client.watch(statuses=["pending", "completed", "failed"]):
            got.append(event)
            if len(got) == 4:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: len(got) == 2)
    server.kill()
    server = serve(data, serve_db, port=server.port)
    with server.http() as admin:
        second = run_to_the_end(admin, 1)
    watcher.join(60)
    assert not watcher.is_alive()
    client.close()
    assert [(e.workload_id, e.to_status) for e in got] == [
        (first[0], "pending"),
        (first[0], "completed"),
        (second[0], "pending"),
        (second[0], "completed"),
    ]
    assert got[0].name == "one" and [e.id for e in got] == sorted({e.id for e in got})

    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral.cli",
            "watch",
            "--json",
            "--status",
            "completed",
            "--after",
            "0",
        ],
        stdout=subprocess.PIPE,
        env={**server.env, "CORRAL_URL": server.url, "CORRAL_TOKEN": key},
    )
    try:
        assert cli.stdout is not None
        lines = [json.loads(cli.stdout.readline()) for _ in range(2)]
        assert [line["workload_id"] for line in lines] == [first[0], second[0]]
        assert lines[1]["id"] == got[3].id
    finally:
        cli.kill()
        cli.wait()
        server.kill()


def test_a_server_told_to_stop_ends_its_streams_and_stops(data: Path, serve_db: list[str]) -> None:
    server = serve(data, serve_db)
    connected = threading.Event()
    ended: list[BaseException | None] = []

    def follow_for_ever() -> None:
        try:
            read_stream(server.http(), 1_000_000, connected=connected)
            ended.append(None)
        except (httpx.HTTPError, AssertionError) as exc:
            ended.append(exc)

    reader = threading.Thread(target=follow_for_ever, daemon=True)
    reader.start()
    assert connected.wait(30)
    server.stop()  # SIGTERM; waits 30 s at most for the process to end (else raises)
    assert server.proc is not None and server.proc.returncode is not None
    reader.join(30)
    assert ended == [None]  # the stream ended cleanly: the client resumes elsewhere


def _p99(http: httpx.Client, path: str, count: int = 200) -> float:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        assert http.get(path).status_code == 200
        times.append(time.perf_counter() - began)
    return statistics.quantiles(times, n=100)[98]


def _stalled_stream(server: LiveServer) -> socket.socket:
    """A client that asks for every event from the start and never reads: a small
    receive buffer, so the server's writes to it soon block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        (
            "GET /v1/events?follow=true&after=0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            f"Authorization: Bearer {server.token}\r\n\r\n"
        ).encode()
    )
    return sock


def test_stalled_consumers_do_not_delay_the_api_or_other_streams(
    data: Path, serve_db: list[str]
) -> None:
    """20 streams that never read, each owed megabytes of events: the p99 of other
    requests stays as it was (compared in the same run, generously: no timing of
    speed), and a stream that reads still gets new events as they happen."""
    labels = {f"team.example.com/key-{i:02d}-" + "k" * 40: "v" * 60 for i in range(16)}
    with serve(data, serve_db) as server, server.http() as admin:
        for _ in range(5):  # 500 workloads: ~1,500 events of ~2 kB
            items = [{"command": ["true"], "labels": labels} for _ in range(100)]
            response = admin.post("/v1/workloads/batch", json={"items": items})
            assert response.status_code == 201, response.text
        last = response.json()["items"][-1]["id"]
        wait_until(lambda: admin.get(f"/v1/workloads/{last}").json()["status"] in ENDS, 120)
        path = f"/v1/workloads/{last}"
        _p99(admin, path, 50)  # warm
        quiet = _p99(admin, path)
        stalled = [_stalled_stream(server) for _ in range(20)]
        try:
            time.sleep(1)  # their buffers fill, their writers block
            got: list[dict[str, Any]] = []
            newest = 0
            while items := page(admin, after=newest, limit=500)["items"]:
                newest = items[-1]["id"]
            reader = threading.Thread(
                target=lambda: got.extend(read_stream(admin, 3, last_event_id=newest)),
                daemon=True,
            )
            reader.start()
            busy = _p99(admin, path)
            (fresh,) = run_to_the_end(admin, 1)
            reader.join(timeout=30)
            assert [e["workload_id"] for e in got] == [fresh] * 3
        finally:
            for sock in stalled:
                sock.close()
        print(f"p99 of GET {path}: {quiet * 1000:.1f} ms quiet, {busy * 1000:.1f} ms stalled")
        assert busy <= 3 * quiet + 0.05, (quiet, busy)


def _stalled_request(server: LiveServer, target: str) -> socket.socket:
    """A client that asks for ``target`` and never reads a byte of the answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: Bearer {server.token}\r\n\r\n"
        ).encode()
    )
    return sock


def test_streams_that_never_read_do_not_keep_a_stopping_server(data: Path) -> None:
    """Streams whose writes block on a full socket (one owed ~4 MB of events, a log
    follow of a workload that runs on): SIGTERM still stops the server within
    seconds, its port and data dir free for the next one."""
    labels = {f"team.example.com/key-{i:02d}-" + "k" * 40: "v" * 60 for i in range(16)}
    server = LiveServer(data, "--executor", "local").start()
    try:
        with server.http() as admin:
            running = admin.post("/v1/workloads", json={"command": ["sleep", "600"]}).json()
            path = f"/v1/workloads/{running['id']}"
            wait_until(lambda: admin.get(path).json()["status"] == "running")
            # 2,000 events of ~2 kB: workloads that wait for that one
            items = [{"command": ["true"], "labels": labels, "depends_on": [running["id"]]}]
            for _ in range(5):
                response = admin.post("/v1/workloads/batch", json={"items": items * 400})
                assert response.status_code == 201, response.text[:200]
        stalled = [
            _stalled_request(server, "/v1/events?follow=true&after=0"),
            _stalled_request(server, f"{path}/logs?follow=true"),
        ]
        time.sleep(2)  # the first one's writes block
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=15)  # raises if it is still running
        for sock in stalled:
            sock.close()
        assert "Traceback" not in server.log.read_text()
        server = serve(data, [], port=server.port)  # the same port, the same data
    finally:
        server.kill()


def test_a_stream_outlives_a_database_outage_and_goes_on(data: Path, own_pg: PgServer) -> None:
    """PostgreSQL stops under an open stream, then starts again: the stream stays open
    (no traceback logged), and delivers the events written once it is back."""
    server = LiveServer(data, "--db", own_pg.url("corral"), "--executor", "none").start()
    try:
        with server.http() as admin:
            before = admin.post("/v1/workloads", json={"command": ["true"]}).json()["id"]
            got: list[dict[str, Any]] = []
            reader = threading.Thread(
                target=lambda: read_stream(server.http(), 2, into=got), daemon=True
            )
            reader.start()
            wait_until(lambda: len(got) == 1)
            own_pg.halt()
            try:
                time.sleep(4)  # the stream's reads fail meanwhile
                assert reader.is_alive()
            finally:
                own_pg.boot()
            after = wait_until(
                lambda: (
                    (r := admin.post("/v1/workloads", json={"command": ["true"]})).status_code
                    == 201
                    and r.json()["id"]
                ),
                timeout=30,
                interval=0.5,
            )
            reader.join(60)
            assert [e["workload_id"] for e in got] == [before, after]
        log = server.log.read_text()
        assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
        assert log.count("an event stream waits for the database") == 1
    finally:
        server.kill()


def _chunks(sock: socket.socket, count: int) -> list[bytes]:
    """The first ``count`` chunks of a chunked HTTP answer on ``sock`` (each is one
    write of the server's), after its headers."""
    reader = sock.makefile("rb")
    while reader.readline() not in (b"\r\n", b""):
        pass  # the status line and headers
    chunks = []
    for _ in range(count):
        size = int(reader.readline().split(b";")[0], 16)
        chunks.append(reader.read(size))
        assert reader.readline() == b"\r\n"
    return chunks


def test_a_stream_writes_a_page_of_events_at_once(data: Path, serve_db: list[str]) -> None:
    """Catching up, a page of events is one write (one chunk), not one per event."""
    with serve(data, serve_db) as server, server.http() as admin:
        run_to_the_end(admin, 2)
        with _stalled_request(server, "/v1/events?follow=true&after=0") as sock:
            first, page = _chunks(sock, 2)
        assert first == b": keep-alive\n\n"
        assert page.count(b"event: transition\n") == 6, page


def test_a_connection_keeps_little_unsent_in_the_kernel() -> None:
    """``TCP_NOTSENT_LOWAT`` on the listener, so on every connection it accepts: a
    client that does not read costs the server little (its stream stops early)."""
    from corral.server import NOT_SENT_MAX_BYTES, _listen

    with _listen("127.0.0.1", 0) as listener, socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            got = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
    assert got == NOT_SENT_MAX_BYTES == 128 * 1024


def _event_message(event_id: int) -> bytes:
    data = {
        "id": event_id,
        "workload_id": "01m8pcbvsjznvjhx0b78mcn2k2",
        "seq": event_id,
        "type": "transition",
        "from_status": "pending",
        "to_status": "running",
        "at": "2026-01-01T00:00:00Z",
        "reason": None,
        "actor": "scheduler",
        "name": None,
        "labels": {},
    }
    body = f"id: {event_id}\nevent: transition\ndata: {json.dumps(data)}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(body), body)


def test_watch_takes_a_silent_connection_for_lost_and_resumes() -> None:
    """A stream that goes silent (a host lost without a reset: no keep-alive any
    more) is given up after ``idle_timeout`` and reopened with the last id."""
    requests: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    conns: list[socket.socket] = []

    def serve() -> None:
        for event_id in (7, 8):
            conn, _ = listener.accept()
            conns.append(conn)
            requests.append(conn.recv(65536))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + _event_message(event_id)
            )  # then nothing, the connection left open

    threading.Thread(target=serve, daemon=True).start()
    got: list[int] = []
    losses: list[CorralClientError | None] = []
    client = Client(f"http://127.0.0.1:{port}", token="k", timeout=5)

    def watch() -> None:
        for event in client.watch(on_reconnect=losses.append, idle_timeout=1):
            got.append(event.id)
            if len(got) == 2:
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    watcher.join(30)
    for conn in conns:
        conn.close()
    listener.close()
    assert not watcher.is_alive()
    assert got == [7, 8]
    assert b"last-event-id: 7\r\n" in requests[1].lower()
    assert len(losses) == 1 and "nothing from the corral server" in str(losses[0])


def test_watch_fails_at_once_when_it_cannot_connect_first() -> None:
    with pytest.raises(ServerUnreachable):
        next(iter(Client("http://127.0.0.1:1", token="k", timeout=5).watch()))
    cli = subprocess.run(
        [sys.executable, "-m", "corral.cli", "watch"],
        env={**LiveServer(Path("/nonexistent")).env, "CORRAL_URL": "http://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 3, cli
    assert cli.stdout == "" and len(cli.stderr.splitlines()) == 1, cli.stderr
    assert "127.0.0.1:1" in cli.stderr


def test_corral_watch_of_an_unknown_workload_says_so_and_a_lost_server_is_one_line(
    data: Path,
) -> None:
    server = serve(data, [])
    env = server.cli_env
    try:
        unknown = subprocess.run(
            [sys.executable, "-m", "corral.cli", "watch", "01m8pcbvsjznvjhx0b78mcn2k2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unknown.returncode == 1, unknown
        assert unknown.stderr.startswith("corral: no workload 01m8pcbvsjznvjhx0b78mcn2k2")
        assert unknown.stdout == ""

        with server.http() as admin:
            first = run_to_the_end(admin, 1)
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral.cli",
                "watch",
                "--json",
                "--status",
                "completed",
                "--since",
                "1h",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert cli.stdout is not None and cli.stderr is not None
            assert json.loads(cli.stdout.readline())["workload_id"] == first[0]
            server.kill()
            assert cli.stderr.readline().endswith("; reconnecting…\n")
            time.sleep(2)  # a few tries fail meanwhile: still one line
            server = serve(data, [], port=server.port)
            with server.http() as admin:
                second = run_to_the_end(admin, 1)
            assert json.loads(cli.stdout.readline())["workload_id"] == second[0]
        finally:
            cli.kill()
            _, rest = cli.communicate()
        assert rest == ""  # no more lines on stderr
    finally:
        server.kill()


def test_streams_stop_once_their_key_is_revoked(data: Path) -> None:
    """A key revoked while it follows the events and a log gets nothing more from
    either (it was checked only when the stream began), and its streams end."""
    server = serve(data, [])
    try:
        with server.http() as admin:
            made = admin.post("/v1/tokens", json={"user": "ops", "admin": True}).json()
            loop = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.05; done"
            wid = admin.post("/v1/workloads", json={"command": ["sh", "-c", loop]}).json()["id"]
            wait_until(lambda: admin.get(f"/v1/workloads/{wid}").json()["status"] == "running")
        events: list[dict[str, Any]] = []
        log_lines: list[tuple[float, str]] = []
        ended: dict[str, float] = {}

        def follow(kind: str) -> None:
            path, params = (
                ("/v1/events", {"follow": "true", "workload": wid})
                if kind == "events"
                else (f"/v1/workloads/{wid}/logs", {"follow": "true"})
            )
            with (
                server.http(token=made["key"], timeout=30) as http,
                http.stream("GET", path, params=params) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    if kind == "events" and line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                    elif kind == "log" and line:
                        log_lines.append((time.monotonic(), line))
            ended[kind] = time.monotonic()

        kinds = ("events", "log")
        readers = [threading.Thread(target=follow, args=(k,), daemon=True) for k in kinds]
        for reader in readers:
            reader.start()
        wait_until(lambda: len(events) == 2 and len(log_lines) >= 3)
        cli = subprocess.Popen(  # corral logs -f with that key: ends saying why
            [sys.executable, "-m", "corral.cli", "logs", "-f", wid],
            env={**server.cli_env, "CORRAL_TOKEN": made["key"]},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert cli.stdout is not None and cli.stdout.readline().startswith("line ")
        with server.http() as admin:
            assert admin.delete(f"/v1/tokens/{made['id']}").status_code == 200
            time.sleep(1.5)  # the workload goes on writing its log
            killed = time.monotonic()
            assert admin.delete(f"/v1/workloads/{wid}").status_code == 200
        for reader in readers:
            reader.join(15)
        assert set(ended) == {"events", "log"}, "a revoked key's stream is still open"
        assert ended["log"] < killed, "the log went on streaming to a revoked key"
        _, stderr = cli.communicate(timeout=30)
        assert cli.returncode == 4, stderr
        assert "the API key is not valid" in stderr and stderr.count("\n") == 1
        assert [e["to_status"] for e in events] == ["pending", "running"]
    finally:
        server.stop()


def test_corral_watch_starts_now_unless_told_otherwise(data: Path) -> None:
    """Without workloads named, ``corral watch`` prints what happens from now on (a
    server of weeks would flood the terminal with its history); ``--since`` and
    ``--after`` go back; a named workload's whole story is told."""
    server = serve(data, [])
    env = server.cli_env

    def watch(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "corral.cli", "watch", "--json", "--status", "completed", *args],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    try:
        with server.http() as admin:
            before = run_to_the_end(admin, 2)
            watchers = {"now": watch(), "since": watch("--since", "1h"), "named": watch(before[1])}
            try:
                wait_until(lambda: len(admin.get("/v1/events").json()["items"]) >= 6)
                time.sleep(1)  # the watchers connect (from now on: after the first two)
                after = run_to_the_end(admin, 1)
                first_line = {}
                for kind, cli in watchers.items():
                    assert cli.stdout is not None
                    first_line[kind] = json.loads(cli.stdout.readline())["workload_id"]
                completed = [
                    e["workload_id"]
                    for e in admin.get("/v1/events").json()["items"]
                    if e["to_status"] == "completed"
                ]  # the two before ran at once: either may end first
            finally:
                for cli in watchers.values():
                    cli.kill()
                    cli.wait()
        assert completed[2] == after[0] and set(completed[:2]) == set(before)
        assert first_line == {"now": after[0], "since": completed[0], "named": before[1]}
        usage = subprocess.run(
            [sys.executable, "-m", "corral.cli", "watch", "--since", "1h", "--after", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert usage.returncode == 2 and "not both" in usage.stderr
    finally:
        server.stop()
