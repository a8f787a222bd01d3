"""Faults lose nothing and wedge nothing (issue 8): a full disk and a busy database
are domain errors (507, 503), refused writes leave no partial rows, and reads keep
working. Real SQLite files; the end-to-end tests run a real ``corral serve``."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from corral.model import WorkloadCreate
from corral.store import StorageFullError, StoreBusyError
from corral.store.base import NewWorkload
from corral.store.sqlite import SQLiteStore
from tests.asgi import SyncASGIClient

PROBLEM = "application/problem+json"


def fill_database(store: SQLiteStore) -> None:
    """Cap the store's database at the pages it has (``max_page_count``, a real
    ``SQLITE_FULL``), then create until a create no longer fits."""
    conn = store._conn()  # the calling thread's connection: the cap is per connection
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(10_000):
        try:
            store.create_workload(big_spec(i), idempotency_key=f"fill-{i}")
        except StorageFullError:
            return
    raise AssertionError("the database never filled up")


def big_spec(i: int) -> WorkloadCreate:
    return WorkloadCreate(
        command=["echo", "x" * 2000], name=f"w{i}", labels={"team": "ml", "n": str(i)}
    )


def rows(path: Path) -> dict[str, int]:
    """Row counts, and rows that would betray a partial write."""
    with sqlite3.connect(path) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
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


def test_a_full_database_refuses_a_batch_whole_and_reads_go_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "corral.db")
    try:
        first, _ = store.create_workload(big_spec(99999))
        fill_database(store)
        before = rows(store.path)
        items = [NewWorkload(big_spec(100 + i), f"batch-{i}", "test") for i in range(5)]
        with pytest.raises(StorageFullError, match="storage is full"):
            store.create_workloads(items)
        assert rows(store.path) == before  # not one item of the batch, nor a part of one
        assert_clean(before)
        assert store.get_workload(first.id).id == first.id
        assert len(store.list_workloads(limit=1000).items) == before["workloads"]
        assert store.list_events(first.id)[0].type == "created"
        store._conn().execute("PRAGMA max_page_count = 1000000")  # room again
        created, replayed = store.create_workload(big_spec(100), idempotency_key="batch-0")
        assert not replayed and created.name == "w100"
    finally:
        store.close()


def test_a_busy_database_is_store_busy_after_the_timeout(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "corral.db", busy_timeout_ms=200)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        kept, _ = store.create_workload(big_spec(0))
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="busy"):
            store.create_workload(big_spec(1), idempotency_key="k")
        assert 0.15 < time.monotonic() - started < 2
        assert store.get_workload(kept.id).id == kept.id  # WAL: readers never wait
        other.execute("ROLLBACK")
        assert store.create_workload(big_spec(1), idempotency_key="k")[0].name == "w1"
        assert rows(store.path)["workloads"] == 2
    finally:
        other.close()
        store.close()


# --- the API, in process ----------------------------------------------------------------


def test_a_full_disk_answers_507_and_reads_200(api: SyncASGIClient, store: SQLiteStore) -> None:
    kept = api.post("/v1/workloads", json={"command": ["true"]}).json()
    fill_database(store)  # the app runs on this thread: the same connection
    before = rows(store.path)
    body = {"command": ["echo", "y" * 2000], "labels": {"a": "b"}}
    response = api.post("/v1/workloads", json=body, headers={"Idempotency-Key": "full"})
    assert response.status_code == 507, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:corral:problem:storage-full"
    assert problem["status"] == 507 and "nothing was stored" in problem["detail"]
    assert rows(store.path) == before
    assert api.get(f"/v1/workloads/{kept['id']}").status_code == 200
    assert api.get("/v1/workloads").status_code == 200
    assert api.get(f"/v1/workloads/{kept['id']}/events").status_code == 200
