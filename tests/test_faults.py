"""Faults lose nothing and wedge nothing (issue 8): a full disk and a busy database
are domain errors (507, 503), refused writes leave no partial rows, and reads keep
working. The full database runs on both databases (``FullDatabase``: a real
``SQLITE_FULL`` or ``disk_full``); the busy ones hold SQLite's own locks and open
SQLite stores themselves (PostgreSQL's lock timeout is test_postgres.py's), and the
end-to-end tests run a real ``corral serve`` on its data dir's SQLite file (the full
file system is the one that file and the logs are on)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.executors.local import kill_all
from corral.model import WorkloadCreate
from corral.store import StorageFullError, StoreBusyError
from corral.store.base import NewWorkload
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import FullDatabase, add_key, app_client, query
from tests.server import LiveServer, pid_gone, wait_until

PROBLEM = "application/problem+json"


def big_spec(i: int) -> WorkloadCreate:
    return WorkloadCreate(
        command=["echo", "x" * 2000], name=f"w{i}", labels={"team": "ml", "n": str(i)}
    )


def rows(target: object) -> dict[str, int]:
    """Row counts, and rows that would betray a partial write, in the database of
    ``target`` (a store, or a SQLite file)."""
    one = lambda sql: query(target, sql)[0][0]  # noqa: E731
    return {
        "workloads": one("SELECT COUNT(*) FROM workloads"),
        "events": one("SELECT COUNT(*) FROM events"),
        "labels": one("SELECT COUNT(*) FROM workload_labels"),
        "keys": one("SELECT COUNT(*) FROM idempotency_keys"),
        "without created event": one(
            "SELECT COUNT(*) FROM workloads w WHERE NOT EXISTS"
            " (SELECT 1 FROM events e WHERE e.workload_id = w.id AND e.type = 'created')"
        ),
        "orphan events": one(
            "SELECT COUNT(*) FROM events e WHERE NOT EXISTS"
            " (SELECT 1 FROM workloads w WHERE w.id = e.workload_id)"
        ),
        "orphan labels": one(
            "SELECT COUNT(*) FROM workload_labels l WHERE NOT EXISTS"
            " (SELECT 1 FROM workloads w WHERE w.id = l.workload_id)"
        ),
        "orphan keys": one(
            "SELECT COUNT(*) FROM idempotency_keys k WHERE NOT EXISTS"
            " (SELECT 1 FROM workloads w WHERE w.id = k.workload_id)"
        ),
    }


CLEAN = {"without created event": 0, "orphan events": 0, "orphan labels": 0, "orphan keys": 0}


def assert_clean(counts: dict[str, int]) -> None:
    assert {k: counts[k] for k in CLEAN} == CLEAN, counts


# --- the store ------------------------------------------------------------------------


def test_a_full_database_refuses_a_batch_whole_and_reads_go_on(
    store: BlockingStore, full_database: FullDatabase
) -> None:
    first, _ = store.create_workload(owner="alice", spec=big_spec(99999))
    full_database.fill()
    before = rows(store)
    items = [NewWorkload(big_spec(100 + i), f"batch-{i}", "test") for i in range(5)]
    with pytest.raises(StorageFullError, match="storage is full"):
        store.create_workloads(items)
    assert rows(store) == before  # not one item of the batch, nor a part of one
    assert_clean(before)
    assert store.get_workload(first.id).id == first.id
    assert len(store.list_workloads(limit=1000).items) == before["workloads"]
    assert store.list_events(first.id)[0].type == "created"
    full_database.make_room()
    created, replayed = store.create_workload(
        owner="alice", spec=big_spec(100), idempotency_key="batch-0"
    )
    assert not replayed and created.name == "w100"


def test_a_busy_database_is_store_busy_after_the_timeout(tmp_path: Path) -> None:
    store = BlockingStore(AsyncSQLiteStore(tmp_path / "corral.db", busy_timeout_ms=200))
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        kept, _ = store.create_workload(owner="alice", spec=big_spec(0))
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="busy"):
            store.create_workload(owner="alice", spec=big_spec(1), idempotency_key="k")
        assert 0.15 < time.monotonic() - started < 2
        assert store.get_workload(kept.id).id == kept.id  # WAL: readers never wait
        other.execute("ROLLBACK")
        assert (
            store.create_workload(owner="alice", spec=big_spec(1), idempotency_key="k")[0].name
            == "w1"
        )
        assert rows(store.path)["workloads"] == 2
    finally:
        other.close()
        store.close()


def test_reads_of_a_database_locked_exclusively_are_store_busy(tmp_path: Path) -> None:
    """Every read, the key lookups of the guard included, turns a busy database into
    ``StoreBusyError`` (503 with Retry-After), never a raw SQLite error (500)."""
    path = tmp_path / "corral.db"
    with contextlib.closing(BlockingStore(AsyncSQLiteStore(path))) as setup:
        key = add_key(setup, "alice", admin=True)
        wid = setup.create_workload(owner="alice", spec=big_spec(0))[0].id
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")  # readers are shut out too
    other.execute("BEGIN EXCLUSIVE")
    store = BlockingStore(AsyncSQLiteStore(path, busy_timeout_ms=200, migrate_schema=False))
    client = app_client(store, tmp_path, token=key)
    try:
        reads = (
            lambda: store.find_api_key("0" * 64),
            lambda: store.list_api_keys(),
            lambda: store.account_of("alice"),
            lambda: store.get_workload(wid),
            lambda: store.list_workloads(),
            lambda: store.list_events(wid),
        )
        for read in reads:
            with pytest.raises(StoreBusyError):
                read()
        answer = client.get("/v1/workloads")  # the guard's lookup of the key
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        other.close()  # the lock goes with the connection
        assert client.get("/v1/workloads").status_code == 200
    finally:
        other.close()
        client.close()
        store.close()


# --- the API, in process ----------------------------------------------------------------


def test_a_full_disk_answers_507_and_reads_200(
    api: SyncASGIClient, store: BlockingStore, full_database: FullDatabase
) -> None:
    kept = api.post("/v1/workloads", json={"command": ["true"]}).json()
    full_database.fill()
    before = rows(store)
    body = {"command": ["echo", "y" * 2000], "labels": {"a": "b"}}
    response = api.post("/v1/workloads", json=body, headers={"Idempotency-Key": "full"})
    assert response.status_code == 507, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:corral:problem:storage-full"
    assert problem["status"] == 507 and "nothing was stored" in problem["detail"]
    assert rows(store) == before
    assert api.get(f"/v1/workloads/{kept['id']}").status_code == 200
    assert api.get("/v1/workloads").status_code == 200
    assert api.get(f"/v1/workloads/{kept['id']}/events").status_code == 200


# --- a live server ----------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == f"urn:corral:problem:{slug}" and body["status"] == status
    assert body["detail"]


def test_a_writer_holding_the_database_gets_503_and_reads_go_on(tmp_path: Path) -> None:
    """Another process's connection holds ``BEGIN IMMEDIATE`` on a live server's
    database: a create answers 503 (Retry-After: 1) after the server's 1 s busy
    timeout, not 30 s; reads answer 200; once the lock is gone, creates work."""
    server = LiveServer(tmp_path / "data", "--executor", "none")
    with server, server.http() as http:
        kept = http.post("/v1/workloads", json={"command": ["true"]}).json()
        lock = sqlite3.connect(tmp_path / "data" / "corral.db", isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            refused = http.post("/v1/workloads", json={"command": ["true"], "name": "refused"})
            took = time.monotonic() - started
            assert_problem(refused, 503, "busy")
            assert refused.headers["retry-after"] == "1"
            assert 0.9 < took < 1.5, took
            killed = http.delete(f"/v1/workloads/{kept['id']}")
            assert_problem(killed, 503, "busy")
            for path in ("", "/events", "/logs"):
                assert http.get(f"/v1/workloads/{kept['id']}{path}").status_code == 200, path
            assert len(http.get("/v1/workloads").json()["items"]) == 1
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert http.post("/v1/workloads", json={"command": ["true"]}).status_code == 201
        assert http.delete(f"/v1/workloads/{kept['id']}").json()["status"] == "killed"
        names = [w["name"] for w in http.get("/v1/workloads").json()["items"]]
        assert "refused" not in names and len(names) == 2


def fill(path: Path) -> int:
    """Write ``path`` until its file system has no byte left; the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = 0
    try:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def test_a_full_disk_loses_nothing_and_wedges_nothing(small_fs: Path, tmp_path: Path) -> None:
    """Issue 8, end to end. The data dir is on a small file system; two workloads
    (1 CPU each, of 2) run when it fills up. Creates answer 507 and store nothing
    partial; reads answer 200; the workloads end while the disk is full. Once the
    filler is removed, without a restart: each ends with its true exit code (none
    ``lost``), and the CPUs are free again (new workloads start and complete)."""
    data = small_fs / "data"
    server = LiveServer(
        data, "--executor", "local", "--cpus", "2", "--kill-grace", "1",
        log=tmp_path / "server.log",  # not on the file system that fills up
    )  # fmt: skip
    go = tmp_path / "go"  # off the full file system too, as are the pid files
    codes: list[int] = []

    def post(http: httpx.Client, body: dict[str, Any], key: str) -> httpx.Response:
        response = http.post("/v1/workloads", json=body, headers={"Idempotency-Key": key})
        codes.append(response.status_code)
        return response

    try:
        with server, server.http() as http:
            ended = {}
            for code in (3, 4):
                pid_file = tmp_path / f"pid-{code}"
                script = (
                    f"echo $$ > {pid_file}; while [ ! -e {go} ]; do sleep 0.05; done; exit {code}"
                )
                body = {"command": ["sh", "-c", script], "resources": {"cpus": 1}}
                ended[code] = post(http, body, f"run-{code}").json()["id"]
            wait_until(lambda: all((tmp_path / f"pid-{c}").exists() for c in ended))
            pids = {c: int((tmp_path / f"pid-{c}").read_text()) for c in ended}

            filler = small_fs / "filler"
            fill(filler)
            stored: list[str] = []  # creates answered 201 (a WAL reset can make room)
            full = 0
            for i in range(200):
                body = {
                    "command": ["echo", "x" * 3000],
                    "name": f"while-full-{i}",
                    "labels": {"phase": "full", "n": str(i)},
                    "resources": {"cpus": 1},
                }
                response = post(http, body, f"full-{i}")
                if response.status_code == 201:
                    stored.append(response.json()["id"])
                    continue
                assert_problem(response, 507, "storage-full")
                full += 1
                if full == 5:
                    break
            assert full == 5, codes
            for wid in ended.values():
                for path in ("", "/events", "/logs"):
                    assert http.get(f"/v1/workloads/{wid}{path}").status_code == 200
            assert http.get("/v1/workloads", params={"limit": 1000}).status_code == 200

            go.touch()  # the workloads end while the disk is full
            wait_until(lambda: all(pid_gone(p) for p in pids.values()))
            time.sleep(1.5)  # the server (and the shims) try to record their ends
            for wid in ended.values():
                assert http.get(f"/v1/workloads/{wid}").status_code == 200

            filler.unlink()
            ends = {}
            for code, wid in ended.items():
                done = wait_until(lambda w=wid: terminal(http, w), timeout=20)
                ends[code] = (done["status"], done["exit_code"], done["reason"])
            for wid in stored:  # queued while the disk was full: they run now
                assert wait_until(lambda w=wid: terminal(http, w))["status"] == "completed"
            after = [
                post(http, {"command": ["true"], "resources": {"cpus": c}}, f"after-{i}").json()
                for i, c in enumerate((2, 1, 1))
            ]
            for w in after:
                assert wait_until(lambda w=w: terminal(http, w["id"]))["status"] == "completed"
            items = http.get("/v1/workloads", params={"limit": 1000}).json()["items"]
            assert {w["id"] for w in items} == {
                *ended.values(),
                *stored,
                *(w["id"] for w in after),
            }
        assert 500 not in codes, codes
        assert_clean(rows(data / "corral.db"))
        # Last, as it needs the shim to wait for room to write its status file (a shim
        # that cannot write it makes the end "lost: … it recorded no exit status").
        assert ends == {c: ("failed", c, f"exit code {c}") for c in ended}, ends
    finally:
        server.kill()
        kill_all(data / "run")


def terminal(http: httpx.Client, wid: str) -> dict[str, Any] | None:
    workload: dict[str, Any] = http.get(f"/v1/workloads/{wid}").json()
    return workload if workload["status"] in {"completed", "failed", "killed"} else None


def test_a_log_that_cannot_be_opened_fails_its_workload_and_nothing_else(
    tmp_path: Path,
) -> None:
    """The logs dir gone (a file in its place): a workload ends ``failed`` saying why,
    its log reads as empty, the server goes on, and runs workloads again once the dir
    is back."""
    data = tmp_path / "data"
    with LiveServer(data, "--executor", "local") as srv, srv.http() as http:
        logs = data / "logs"
        logs.rmdir()
        logs.write_text("not a directory")
        wid = http.post("/v1/workloads", json={"command": ["echo", "hi"]}).json()["id"]
        done = wait_until(lambda: terminal(http, wid))
        assert done["status"] == "failed"
        assert done["reason"] == "spawn failed: cannot open its log: Not a directory"
        assert http.get(f"/v1/workloads/{wid}/logs").text == ""
        followed = http.get(f"/v1/workloads/{wid}/logs", params={"follow": "true"})
        assert followed.status_code == 200 and followed.text == ""
        logs.unlink()
        logs.mkdir()
        again = http.post("/v1/workloads", json={"command": ["echo", "hi"]}).json()["id"]
        assert wait_until(lambda: terminal(http, again))["status"] == "completed"
        assert http.get(f"/v1/workloads/{again}/logs").text == "hi\n"
