"""``corral.Client``'s methods of issue 9 (docs/cli.md §5): dependencies and array
indexes on submit, ``submit_many``, ``kill_many``, the new list filters, ``page`` and
``status``. What they send and how they read the answer is checked against a scripted
server; end to end against a real ``corral serve`` once its routes are merged."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest

from corral import (
    Client,
    CorralClientError,
    InvalidInput,
    KillResult,
    NotKilled,
    Page,
    ServerStatus,
    Status,
    Workload,
)
from tests.scripted import KEY, Answer, ScriptedServer, Seen, workload_body
from tests.server import LiveServer


def query(seen: Seen) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(seen.path).query, keep_blank_values=True)


def test_submit_sends_dependencies_and_the_array_index_only_when_given() -> None:
    created = Answer(201, workload_body(depends_on=["01a"], array_index=2))
    with ScriptedServer(created) as srv, Client(srv.url, token=KEY) as client:
        w = client.submit(["true"], depends_on=("01a",), dependency_type="afterany", array_index=2)
        client.submit(["true"])
    assert (w.depends_on, w.array_index) == (["01a"], 2)
    assert srv.seen[0].json() == {
        "command": ["true"],
        "depends_on": ["01a"],
        "dependency_type": "afterany",
        "array_index": 2,
    }
    assert srv.seen[1].json() == {"command": ["true"]}


def test_submit_many_sends_one_batch_and_returns_its_workloads_in_order() -> None:
    def answer(seen: Seen) -> Answer:
        items = seen.json()["items"]
        return Answer(201, {"items": [workload_body(id=f"w{i}") for i in range(len(items))]})

    specs = [{"command": ["echo", str(i)], "array_index": i} for i in range(3)]
    with ScriptedServer(answer) as srv, Client(srv.url, token=KEY) as client:
        made = client.submit_many(specs, max_running=2, idempotency_key="b1")
        assert [w.id for w in made] == ["w0", "w1", "w2"]
        assert all(isinstance(w, Workload) for w in made)
        client.submit_many([{"command": ["true"]}, {"command": ["true"], "depends_on": [0]}])
    first, second = srv.seen
    assert (first.method, first.path) == ("POST", "/v1/workloads/batch")
    assert first.json() == {"items": specs, "max_running": 2}
    assert first.headers["idempotency-key"] == "b1"
    assert second.json() == {
        "items": [{"command": ["true"]}, {"command": ["true"], "depends_on": [0]}]
    }
    assert "idempotency-key" not in second.headers


def test_kill_many_sends_what_was_named_and_reads_each_outcome() -> None:
    result = {
        "killed": [workload_body(id="w1", status="killed")],
        "not_killed": [{"id": "w2", "status": "completed", "detail": "w2 already ended"}],
        "not_found": ["w3"],
    }
    with ScriptedServer(Answer(200, result)) as srv, Client(srv.url, token=KEY) as client:
        got = client.kill_many(ids=["w1", "w2", "w3"])
        client.kill_many(status=[Status.PENDING], labels={"team": "ml"}, name="train")
        client.kill_many(all=True, all_users=True)
        client.kill_many()
    assert isinstance(got, KillResult)
    assert [(w.id, w.status) for w in got.killed] == [("w1", Status.KILLED)]
    assert got.not_killed == [NotKilled("w2", Status.COMPLETED, "w2 already ended")]
    assert got.not_found == ["w3"]
    assert [(s.method, s.path) for s in srv.seen] == [("POST", "/v1/workloads/kill")] * 4
    assert [s.json() for s in srv.seen] == [
        {"ids": ["w1", "w2", "w3"]},
        {"status": ["pending"], "labels": {"team": "ml"}, "name": "train"},
        {"all": True, "all_users": True},
        {},  # the server says what is missing
    ]


def test_list_and_page_send_the_new_filters() -> None:
    def answer(seen: Seen) -> Answer:
        cursor = dict(query(seen)).get("cursor")
        if cursor == "":
            return Answer(200, {"items": [workload_body(id="w2")], "next_cursor": "c2"})
        return Answer(200, {"items": [workload_body(id="w1")], "next_cursor": None, "total": 2})

    with ScriptedServer(answer) as srv, Client(srv.url, token=KEY) as client:
        listed = client.list(name="train", id_prefix="01m8", status=["running"], page_size=1)
        assert [w.id for w in listed] == ["w2", "w1"]
        page = client.page(name="train", id_prefix="01m8", limit=1, cursor="c2", count=True)
        first = client.page()
    assert query(srv.seen[0]) == [
        ("status", "running"),
        ("name", "train"),
        ("id_prefix", "01m8"),
        ("limit", "1"),
        ("cursor", ""),
    ]
    assert dict(query(srv.seen[1]))["cursor"] == "c2"
    assert isinstance(page, Page)
    assert ([w.id for w in page.items], page.next_cursor, page.total) == (["w1"], None, 2)
    assert query(srv.seen[2]) == [
        ("name", "train"),
        ("id_prefix", "01m8"),
        ("limit", "1"),
        ("cursor", "c2"),
        ("count", "true"),
    ]
    assert query(srv.seen[3]) == [("limit", "50"), ("cursor", "")]
    assert (first.next_cursor, first.total) == ("c2", None)


def test_status_reads_the_server_s_status() -> None:
    amounts = {"cpus": 8.0, "memory_mb": 16384, "gpus": 1}
    body = {
        "executor": "local",
        "capacity": amounts,
        "used": {"cpus": 2.0, "memory_mb": 1024, "gpus": 0},
        "free": {"cpus": 6.0, "memory_mb": 15360, "gpus": 1},
        "counts": {"pending": 3, "running": 1, "completed": 0, "failed": 0, "killed": 0},
        "queue": [
            {
                "id": "w9",
                "name": "big",
                "owner": "alice",
                "resources": {"cpus": 16.0, "memory_mb": 0, "gpus": 0},
                "priority": 5,
                "reason": "waiting for 16 CPUs (8 free)",
            }
        ],
        "queue_length": 3,
        "server": "b",
        "leader": "a",
    }
    with ScriptedServer(Answer(200, body)) as srv, Client(srv.url, token=KEY) as client:
        status = client.status()
    assert srv.seen[0].path == "/v1/status"
    assert isinstance(status, ServerStatus)
    assert (status.executor, status.free.cpus, status.counts["pending"]) == ("local", 6.0, 3)
    assert (status.server, status.leader) == ("b", "a")
    older = ServerStatus.from_json({k: v for k, v in body.items() if k not in ("server", "leader")})
    assert (older.server, older.leader) == (None, None)  # a server from before names
    assert status.queue[0].resources.cpus == 16.0 and status.queue_length == 3
    with (
        ScriptedServer(Answer(200, {**body, "capacity": None})) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(CorralClientError, match=r"\(status\.capacity: expected an object"),
    ):
        client.status()


# --- end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("client-bulk"), "--executor", "none").start()
    yield live
    live.kill()


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, token=server.token) as c:
        yield c


def test_filters_bulk_kill_and_status_end_to_end(client: Client) -> None:
    tag = {"run": uuid.uuid4().hex[:12]}
    name = f"job-{tag['run']}"
    ids = [client.submit(["sleep", "60"], name=name, labels=tag).id for _ in range(3)]
    other = client.submit(["true"], labels=tag)

    named = client.page(name=name, labels=tag, limit=2, count=True)
    assert (len(named.items), named.total) == (2, 3) and named.next_cursor
    assert [w.id for w in client.list(id_prefix=ids[0][:-1], labels=tag)] == [ids[0]]
    with pytest.raises(InvalidInput):
        client.page(id_prefix="01")  # fewer than 4 characters

    client.kill(ids[2])
    result = client.kill_many(ids=[ids[2], "01zzzzzzzzzzzzzzzzzzzzzzzz"], name=name)
    assert sorted(w.id for w in result.killed) == sorted(ids[:2])
    assert [(n.id, n.status) for n in result.not_killed] == [(ids[2], Status.KILLED)]
    assert result.not_found == ["01zzzzzzzzzzzzzzzzzzzzzzzz"]
    assert client.get(other.id).status is Status.PENDING  # another name
    with pytest.raises(InvalidInput):
        client.kill_many()
    assert client.kill_many(labels=tag).killed[0].id == other.id

    status = client.status()
    assert status.executor == "none"
    assert status.counts.get("killed", 0) >= 4
    assert status.queue_length == len(status.queue) or len(status.queue) == 10


def test_batches_and_dependencies_end_to_end(client: Client, server: LiveServer) -> None:
    made = client.submit_many(
        [{"command": ["echo", str(i)], "array_index": i} for i in range(3)], max_running=2
    )
    assert [w.array_index for w in made] == [0, 1, 2]
    assert made[0].batch_id is not None and {w.batch_id for w in made} == {made[0].batch_id}
    assert {w.max_running for w in made} == {2}
    after = client.submit(["true"], depends_on=[made[0].id], dependency_type="afterany")
    assert (after.depends_on, after.dependency_type) == ([made[0].id], "afterany")
    with pytest.raises(InvalidInput, match="depends_on"):
        client.submit(["true"], depends_on=["01zzzzzzzzzzzzzzzzzzzzzzzz"])
    chained = client.submit_many([{"command": ["true"]}, {"command": ["true"], "depends_on": [0]}])
    assert chained[1].depends_on == [chained[0].id]
