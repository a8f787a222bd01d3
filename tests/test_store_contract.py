"""The store contract: every Store implementation passes these (see conftest)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest

from corral.errors import FieldError, InvalidInputError
from corral.model import Status, WorkloadBatchItem, WorkloadCreate
from corral.store import IdempotencyKeyReusedError, InvalidTransitionError, NotFoundError
from corral.store.base import EventFilter, NewWorkload
from corral.store.errors import DatabaseError
from tests.blocking import BlockingStore
from tests.conftest import (
    event_inserts_fail,
    is_sqlite,
    sqlite_path,
    writes_refused,
)

SPEC = WorkloadCreate(command=["true"])


def test_create_get_roundtrip(store: BlockingStore) -> None:
    spec = WorkloadCreate(
        command=["python", "-c", "print(1)"],
        name="n",
        env={"A": "1"},
        cwd="/tmp",
        resources={"cpus": 0.5, "memory_mb": 10, "gpus": 1},  # type: ignore[arg-type]
        labels={"team": "ml"},
        priority=5,
        timeout_seconds=2.5,
    )
    created, replayed = store.create_workload(owner="alice", spec=spec)
    assert not replayed
    assert created.status is Status.PENDING
    got = store.get_workload(created.id)
    assert got == created
    assert got.model_dump(include=set(WorkloadCreate.model_fields)) == spec.model_dump()
    assert got.created_at == got.updated_at and got.started_at is None


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_a_group_commit_of_unlike_workloads_reads_each_back_as_given(
    store: BlockingStore, keyed: bool
) -> None:
    """One ``create_workloads`` call (PostgreSQL writes each table's rows with one
    statement, a column per array; without keys or dependencies, every table with one
    statement): fields set in one item and unset in the next, integers and fractions
    in one column, and text that array syntax would have to escape, each read back as
    given, with its labels and event."""
    awkward = 'q"uote \\back {br,ace} NULL ünï ✓'
    specs = [
        SPEC,
        WorkloadCreate(
            command=["sh", "-c", awkward, ""],
            name=awkward,
            env={"Q": '"', "B": "\\", "E": "", "U": awkward},
            cwd="/srv/a b,{c}",
            resources={"cpus": 2, "memory_mb": 2**40, "gpus": 3},  # type: ignore[arg-type]
            labels={"k": "NULL", "empty": ""},
            priority=-7,
            timeout_seconds=30,
        ),
        WorkloadCreate(
            command=["true"],
            resources={"cpus": 0.25},  # type: ignore[arg-type]
            timeout_seconds=2.5,
            labels={"k": "v"},
            dependency_type="afterany",
        ),
    ]
    results = store.create_workloads(
        [
            NewWorkload(spec, "alice", f"key{i}" if keyed else None, f"actor{i}")
            for i, spec in enumerate(specs)
        ]
    )
    made = []
    for i, (spec, result) in enumerate(zip(specs, results, strict=True)):
        assert not isinstance(result, Exception), result
        created, replayed = result
        assert not replayed
        made.append(created.id)
        got = store.get_workload(created.id)
        assert got == created
        assert got.model_dump(include=set(WorkloadCreate.model_fields)) == spec.model_dump()
        assert [(e.type, e.actor) for e in store.list_events(created.id)] == [
            ("created", f"actor{i}")
        ]
    for label, ids in [
        (("k", "NULL"), [made[1]]),
        (("empty", ""), [made[1]]),
        (("k", "v"), [made[2]]),
    ]:
        assert [w.id for w in store.list_workloads(labels=[label]).items] == ids


def test_pending_running_completed(store: BlockingStore) -> None:
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    running = store.update_workload_status(w.id, Status.RUNNING, actor="test")
    assert running.status is Status.RUNNING and running.started_at is not None
    done = store.update_workload_status(w.id, Status.COMPLETED, exit_code=0)
    assert done.status is Status.COMPLETED
    assert done.exit_code == 0 and done.reason == "exit code 0"
    assert done.finished_at is not None and done.started_at == running.started_at
    assert store.get_workload(w.id) == done


def test_pending_to_completed_raises_with_fields(store: BlockingStore) -> None:
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    with pytest.raises(InvalidTransitionError) as info:
        store.update_workload_status(w.id, Status.COMPLETED)
    err = info.value
    assert err.current is Status.PENDING
    assert err.requested is Status.COMPLETED
    assert err.allowed == [Status.KILLED, Status.RUNNING]
    assert "pending" in str(err) and "completed" in str(err)
    assert store.get_workload(w.id).status is Status.PENDING
    assert len(store.list_events(w.id)) == 1


@pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.FAILED, Status.KILLED])
def test_terminal_has_no_way_out(store: BlockingStore, terminal: Status) -> None:
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    store.update_workload_status(w.id, Status.RUNNING)
    store.update_workload_status(w.id, terminal)
    for target in Status:
        with pytest.raises(InvalidTransitionError) as info:
            store.update_workload_status(w.id, target)
        assert info.value.allowed == []


def test_same_status_is_invalid(store: BlockingStore) -> None:
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    with pytest.raises(InvalidTransitionError):
        store.update_workload_status(w.id, Status.PENDING)
    store.update_workload_status(w.id, Status.RUNNING)
    with pytest.raises(InvalidTransitionError):
        store.update_workload_status(w.id, Status.RUNNING)


def test_events_are_recorded_in_order(store: BlockingStore) -> None:
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    store.update_workload_status(w.id, Status.RUNNING, actor="scheduler")
    store.update_workload_status(w.id, Status.FAILED, exit_code=3, actor="scheduler")
    events = store.list_events(w.id)
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.type for e in events] == ["created", "transition", "transition"]
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, Status.PENDING),
        (Status.PENDING, Status.RUNNING),
        (Status.RUNNING, Status.FAILED),
    ]
    assert events[2].reason == "exit code 3" and events[2].actor == "scheduler"
    assert [e.at for e in events] == sorted(e.at for e in events)
    final = store.get_workload(w.id)
    assert events[-1].at == final.updated_at == final.finished_at


@pytest.mark.parametrize(
    ("before", "target"),
    [([], Status.RUNNING), ([Status.RUNNING], Status.COMPLETED), ([], Status.KILLED)],
)
def test_status_and_event_commit_together(
    store: BlockingStore, before: list[Status], target: Status
) -> None:
    """A transition whose event cannot be written leaves no trace: the status, its
    timestamps and the event log are as they were, and the store still works."""
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    for status in before:
        w = store.update_workload_status(w.id, status)
    events = store.list_events(w.id)
    with event_inserts_fail(store), pytest.raises(Exception, match="event refused"):
        store.update_workload_status(w.id, target)
    assert store.get_workload(w.id) == w
    assert store.list_events(w.id) == events
    assert store.update_workload_status(w.id, target).status is target
    assert [e.to_status for e in store.list_events(w.id)][-1] is target


def test_kill_reason_defaults(store: BlockingStore) -> None:
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    killed = store.update_workload_status(w.id, Status.KILLED)
    assert killed.reason == "killed by request" and killed.finished_at is not None


def test_unknown_id_raises_not_found(store: BlockingStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_workload("nope")
    with pytest.raises(NotFoundError):
        store.update_workload_status("nope", Status.RUNNING)
    with pytest.raises(NotFoundError):
        store.list_events("nope")


def test_idempotency_key(store: BlockingStore) -> None:
    first, replayed = store.create_workload(owner="alice", spec=SPEC, idempotency_key="k1")
    assert not replayed
    again, replayed = store.create_workload(
        owner="alice", spec=WorkloadCreate(command=["true"]), idempotency_key="k1"
    )
    assert replayed and again == first
    with pytest.raises(IdempotencyKeyReusedError):
        store.create_workload(
            owner="alice", spec=WorkloadCreate(command=["false"]), idempotency_key="k1"
        )
    other, replayed = store.create_workload(owner="alice", spec=SPEC, idempotency_key="k2")
    assert not replayed and other.id != first.id
    assert len(store.list_workloads(limit=10).items) == 2


def test_list_filters_newest_first(store: BlockingStore) -> None:
    ids = []
    for i in range(6):
        w, _ = store.create_workload(
            owner="alice",
            spec=WorkloadCreate(
                command=["true"], labels={"team": "a" if i % 2 else "b", "n": str(i)}
            ),
        )
        ids.append(w.id)
    store.update_workload_status(ids[1], Status.RUNNING)
    store.update_workload_status(ids[3], Status.KILLED)
    assert [w.id for w in store.list_workloads().items] == ids[::-1]
    assert [w.id for w in store.list_workloads(labels=[("team", "a")]).items] == [
        ids[5],
        ids[3],
        ids[1],
    ]
    got = store.list_workloads(statuses=[Status.RUNNING, Status.KILLED], labels=[("team", "a")])
    assert [w.id for w in got.items] == [ids[3], ids[1]]
    both = store.list_workloads(labels=[("team", "a"), ("n", "5")])
    assert [w.id for w in both.items] == [ids[5]]
    assert store.list_workloads(labels=[("team", "zzz")]).items == []


def test_pagination_exactly_once_while_inserting(
    store_factory: Callable[[], BlockingStore],
) -> None:
    store = store_factory()
    existing = {store.create_workload(owner="alice", spec=SPEC)[0].id for _ in range(300)}
    stop = threading.Event()

    def insert() -> None:
        writer = store_factory()
        while not stop.is_set():
            writer.create_workload(owner="alice", spec=SPEC)

    thread = threading.Thread(target=insert)
    thread.start()
    try:
        seen: list[str] = []
        cursor = None
        while True:
            page = store.list_workloads(limit=7, cursor=cursor)
            seen.extend(w.id for w in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    finally:
        stop.set()
        thread.join()
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert existing <= set(seen), "a row that existed before the listing was skipped"
    assert seen == sorted(seen, reverse=True)


def test_limit_and_cursor_are_checked(store: BlockingStore) -> None:
    from corral.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        store.list_workloads(limit=0)
    with pytest.raises(InvalidInputError):
        store.list_workloads(cursor="not-a-cursor")


def test_create_workloads_is_atomic_per_item(store: BlockingStore) -> None:
    from corral.store.base import NewWorkload

    store.create_workload(owner="alice", spec=SPEC, idempotency_key="taken")
    results = store.create_workloads(
        [
            NewWorkload(WorkloadCreate(command=["a"]), "alice"),
            NewWorkload(WorkloadCreate(command=["other"]), "alice", idempotency_key="taken"),
            NewWorkload(WorkloadCreate(command=["b"]), "alice", idempotency_key="fresh"),
            NewWorkload(WorkloadCreate(command=["b"]), "alice", idempotency_key="fresh"),
        ]
    )
    assert isinstance(results[1], IdempotencyKeyReusedError)
    first, second, third = results[0], results[2], results[3]
    assert not isinstance(first, Exception) and not isinstance(second, Exception)
    assert not isinstance(third, Exception)
    assert first[1] is False and second[1] is False
    assert third == (second[0], True)  # the same key later in the batch replays
    stored = {w.command[0] for w in store.list_workloads(limit=10).items}
    assert stored == {"true", "a", "b"}
    assert len(store.list_events(first[0].id)) == 1


def test_event_times_follow_their_order_under_contention(
    store_factory: Callable[[], BlockingStore],
) -> None:
    """A kill that waits for the write lock while a claim commits is stamped after the
    claim: an event's ``at`` is taken under the lock, so a later ``seq`` never carries
    an earlier time. (Stamped before the lock, the kill's event came out 0.3 s older
    than the claim's that precedes it.)"""
    import time

    from corral.ids import now_rfc3339

    store = store_factory()
    w, _ = store.create_workload(owner="alice", spec=SPEC)
    claim: Any
    if is_sqlite(store):
        claim = sqlite3.connect(sqlite_path(store), isolation_level=None)
        claim.execute("BEGIN IMMEDIATE")  # another writer (a scheduler) holds the lock
    else:  # PostgreSQL: another transaction holds the workload's row lock
        import psycopg

        claim = psycopg.connect(store.url)
        claim.execute("SELECT 1 FROM workloads WHERE id = %s FOR UPDATE", (w.id,))
    mark = "?" if is_sqlite(store) else "%s"
    killer = threading.Thread(
        target=lambda: store_factory().update_workload_status(w.id, Status.KILLED, actor="bob")
    )
    killer.start()
    time.sleep(0.3)  # the kill waits for the lock meanwhile
    claim.execute(f"UPDATE workloads SET status = 'running' WHERE id = {mark}", (w.id,))
    claim.execute(
        "INSERT INTO events (workload_id, seq, type, from_status, to_status, at, actor)"
        f" VALUES ({mark}, 2, 'transition', 'pending', 'running', {mark}, 'scheduler')",
        (w.id, now_rfc3339()),
    )
    claim.commit()
    killer.join()
    claim.close()
    events = store.list_events(w.id)
    assert [(e.seq, e.to_status) for e in events] == [
        (1, Status.PENDING),
        (2, Status.RUNNING),
        (3, Status.KILLED),
    ]
    times = [e.at for e in events]
    assert times == sorted(times), events


def _all_pages(store: BlockingStore, limit: int = 3, **filters: object) -> list[str]:
    """Every id ``list_workloads`` lists with these filters, page after page."""
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_workloads(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        seen += [w.id for w in page.items]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


def test_id_prefix_name_and_count_filter_as_a_python_filter_would(store: BlockingStore) -> None:
    made = []
    for i in range(24):
        spec = WorkloadCreate(
            command=["true"], name=f"n{i % 3}", labels={"team": "ml" if i % 2 else "web"}
        )
        w, _ = store.create_workload(spec, owner="alice" if i % 4 else "bob")
        if i % 5 == 0:
            w = store.update_workload_status(w.id, Status.KILLED)
        made.append(w)
    prefixes = [None] + [made[i].id[:n] for i in (0, 7, 23) for n in (4, 10, 11, 13, 25, 26)]
    prefixes.append(made[3].id[:12][:-1] + ("0" if made[3].id[11] != "0" else "1"))
    filters: list[dict[str, object]] = [
        {},
        {"statuses": [Status.PENDING]},
        {"statuses": [Status.KILLED, Status.PENDING], "labels": [("team", "ml")]},
        {"labels": [("team", "web")]},
        {"owner": "alice"},
        {"owner": "bob", "labels": [("team", "web")]},
        {"owner": "alice", "statuses": [Status.PENDING]},
    ]
    for base in filters:
        for prefix in prefixes:
            for name in (None, "n1", "nobody"):
                query = {**base, "id_prefix": prefix, "name": name}
                expected = sorted(
                    (
                        w.id
                        for w in made
                        if (prefix is None or w.id.startswith(prefix))
                        and (name is None or w.name == name)
                        and w.status in (base.get("statuses") or list(Status))  # type: ignore[operator]
                        and all(w.labels.get(k) == v for k, v in base.get("labels", []))  # type: ignore[attr-defined]
                        and base.get("owner") in (None, w.owner)
                    ),
                    reverse=True,
                )
                assert _all_pages(store, **query) == expected, query
                assert store.count_workloads(**query) == len(expected), query  # type: ignore[arg-type]


def test_a_full_id_as_prefix_finds_exactly_it(store: BlockingStore) -> None:
    ids = [store.create_workload(SPEC, owner="alice")[0].id for _ in range(50)]
    for wid in ids:
        assert _all_pages(store, id_prefix=wid) == [wid]
    first4 = {wid[:4] for wid in ids}  # made within a second: they share 4 characters
    assert len(first4) == 1
    assert store.count_workloads(id_prefix=first4.pop()) == 50


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("", "too short"),
        ("01m", "too short"),
        ("01M8", "lower case"),
        ("01m8i", "'i'"),
        ("01m8-", "'-'"),
        ("0" * 27, "longer than an id"),
    ],
)
def test_a_bad_id_prefix_is_invalid_input_saying_why(
    store: BlockingStore, prefix: str, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=says):
        store.list_workloads(id_prefix=prefix)
    with pytest.raises(InvalidInputError, match=says):
        store.count_workloads(id_prefix=prefix)


def test_count_by_status_counts_everyone_or_one_owner(store: BlockingStore) -> None:
    assert store.count_by_status() == dict.fromkeys(Status, 0)
    for owner, status in [("alice", None), ("alice", Status.RUNNING), ("bob", Status.KILLED)]:
        w, _ = store.create_workload(SPEC, owner=owner)
        if status is not None:
            store.update_workload_status(w.id, status)
    store.create_workload(SPEC, owner="bob")
    assert store.count_by_status() == {
        Status.PENDING: 2, Status.RUNNING: 1, Status.COMPLETED: 0, Status.FAILED: 0,
        Status.KILLED: 1,
    }  # fmt: skip
    assert store.count_by_status(owner="alice") == {
        **dict.fromkeys(Status, 0), Status.PENDING: 1, Status.RUNNING: 1
    }  # fmt: skip
    assert store.count_by_status(owner="carol") == dict.fromkeys(Status, 0)


# --- batches and dependencies (issue 9) ---------------------------------------------


def table_rows(store: BlockingStore, table: str) -> list[tuple[object, ...]]:
    path = sqlite_path(store)
    if path is not None:
        with sqlite3.connect(path) as conn:
            return conn.execute(f"SELECT * FROM {table}").fetchall()
    import psycopg

    with psycopg.connect(store.url) as pg_conn:
        return pg_conn.execute(f"SELECT * FROM {table}").fetchall()


def item(command: str = "true", **fields: object) -> WorkloadBatchItem:
    return WorkloadBatchItem.model_validate({"command": [command], **fields})


def test_a_batch_stores_its_items_in_order_with_their_dependencies(store: BlockingStore) -> None:
    """Integers name items of the batch and become their ids; ids name workloads
    stored before; each dependency is stored once (workload and table alike)."""
    before, _ = store.create_workload(owner="alice", spec=SPEC)
    specs = [
        item("a", array_index=0),
        item("b", array_index=1, depends_on=[0, 0], dependency_type="afterany"),
        item("c", depends_on=[1, before.id, 0]),
    ]
    made, replayed = store.create_batch(specs, owner="alice", max_running=2, actor="alice")
    assert not replayed
    a, b, c = made
    assert [w.command[0] for w in made] == ["a", "b", "c"]
    assert [w.id for w in made] == sorted(w.id for w in made)
    assert a.batch_id is not None and {w.batch_id for w in made} == {a.batch_id}
    assert {w.max_running for w in made} == {2}
    assert (a.array_index, b.array_index, c.array_index) == (0, 1, None)
    assert a.depends_on == [] and b.depends_on == [a.id]
    assert c.depends_on == [b.id, before.id, a.id]
    assert (b.dependency_type, c.dependency_type) == ("afterany", "afterok")
    assert [store.get_workload(w.id) for w in made] == made
    assert before.batch_id is None and before.depends_on == [] and before.max_running is None
    assert sorted(table_rows(store, "workload_dependencies")) == sorted(
        [(b.id, a.id), (c.id, b.id), (c.id, before.id), (c.id, a.id)]
    )
    assert [e.actor for e in store.list_events(c.id)] == ["alice"]
    assert store.statuses([a.id, before.id, "01m8n0ne000000000000000000"]) == {
        a.id: Status.PENDING,
        before.id: Status.PENDING,
    }


def test_an_item_may_depend_on_a_later_item_of_its_batch(store: BlockingStore) -> None:
    """An index may name an item further down the list (a pipeline written last step
    first): the batch is stored, not refused by the table of dependencies (the item
    it names is not written yet when the naming item is)."""
    specs = [item("last", depends_on=[1]), item("middle", depends_on=[2]), item("first")]
    made, _ = store.create_batch(specs, owner="alice")
    last, middle, first = made
    assert last.depends_on == [middle.id] and middle.depends_on == [first.id]
    assert sorted(table_rows(store, "workload_dependencies")) == sorted(
        [(last.id, middle.id), (middle.id, first.id)]
    )


@pytest.mark.parametrize(
    ("depends_on", "where", "message"),
    [
        ([5], ("items", 2, "depends_on", 0), "no item 5 in this batch"),
        ([2], ("items", 2, "depends_on", 0), "cannot depend on itself"),
        # the entry that closes the cycle, walking from the first item
        ([0, 3], ("items", 3, "depends_on", 0), "a dependency cycle: items 2 -> 3 -> 2"),
        (["01m8n0ne000000000000000000"], ("items", 2, "depends_on", 0), "no workload"),
    ],
)
def test_a_bad_reference_refuses_the_whole_batch(
    store: BlockingStore, depends_on: list[object], where: tuple[object, ...], message: str
) -> None:
    specs = [item("a"), item("b"), item("c", depends_on=depends_on), item("d", depends_on=[2])]
    with pytest.raises(FieldError) as info:
        store.create_batch(specs, owner="alice")
    assert info.value.loc == where and message in info.value.msg
    assert str(info.value).startswith(f"items[{where[1]}].depends_on[{where[3]}]: ")
    assert store.list_workloads().items == []
    assert table_rows(store, "events") == [] and table_rows(store, "workload_dependencies") == []


def test_a_batch_that_fails_in_the_database_stores_nothing(store: BlockingStore) -> None:
    """All or none: the database refuses the labels of the third item (after two
    were written in the same transaction); no workload, event or label is left."""
    kept, _ = store.create_workload(owner="alice", spec=SPEC)
    specs = [item("a", labels={"n": "1"}), item("b", depends_on=[0]), item("c", labels={"n": "x"})]
    with (
        writes_refused(store, on="INSERT ON workload_labels", when="NEW.value = 'x'"),
        pytest.raises(
            sqlite3.IntegrityError if is_sqlite(store) else DatabaseError,
            match="refused by the test",
        ),
    ):
        store.create_batch(specs, owner="alice", idempotency_key="k")
    assert [w.id for w in store.list_workloads().items] == [kept.id]
    assert len(table_rows(store, "events")) == 1
    assert table_rows(store, "workload_labels") == []
    assert table_rows(store, "workload_dependencies") == []
    made, replayed = store.create_batch(specs, owner="alice", idempotency_key="k")
    assert not replayed and len(made) == 3  # the key was not taken either


def test_a_group_commit_that_fails_in_the_database_stores_nothing(store: BlockingStore) -> None:
    """A group commit without keys or dependencies (on PostgreSQL, one statement) that
    the database refuses at the labels of its last item is refused whole: no workload,
    event or label of any item is left."""
    kept, _ = store.create_workload(owner="alice", spec=SPEC)
    items = [NewWorkload(WorkloadCreate(command=["a"], labels={"n": v}), "alice") for v in "12x"]
    with (
        writes_refused(store, on="INSERT ON workload_labels", when="NEW.value = 'x'"),
        pytest.raises(
            sqlite3.IntegrityError if is_sqlite(store) else DatabaseError,
            match="refused by the test",
        ),
    ):
        store.create_workloads(items)
    assert [w.id for w in store.list_workloads().items] == [kept.id]
    assert len(table_rows(store, "events")) == 1
    assert table_rows(store, "workload_labels") == []


def test_dependencies_name_the_owners_own_workloads(store: BlockingStore) -> None:
    """Another user's workload does not exist for them: the same 422 as an unknown id."""
    mine, _ = store.create_workload(owner="alice", spec=SPEC)
    theirs, _ = store.create_workload(owner="bob", spec=SPEC)
    spec = WorkloadCreate(command=["true"], depends_on=[mine.id, theirs.id])
    with pytest.raises(FieldError) as info:
        store.create_workload(spec, owner="alice")
    assert str(info.value) == f"depends_on[1]: no workload has id {theirs.id!r}"
    with pytest.raises(FieldError):
        store.create_batch([item(depends_on=[theirs.id])], owner="alice")
    assert len(store.list_workloads(owner="alice").items) == 1
    done, _ = store.create_workload(
        WorkloadCreate(command=["true"], depends_on=[mine.id, mine.id]), owner="alice"
    )
    assert done.depends_on == [mine.id] and store.get_workload(done.id) == done
    assert done.batch_id is None and done.dependency_type == "afterok"


def test_a_refused_item_of_a_group_commit_leaves_the_others(store: BlockingStore) -> None:
    """The single-create path commits several requests together: one naming an
    unknown dependency is refused alone."""
    from corral.store.base import NewWorkload

    unknown = WorkloadCreate(command=["x"], depends_on=["01m8n0ne000000000000000000"])
    results = store.create_workloads(
        [NewWorkload(SPEC, "alice"), NewWorkload(unknown, "alice"), NewWorkload(SPEC, "alice")]
    )
    assert isinstance(results[1], FieldError)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert len(store.list_workloads().items) == 2


def test_a_batch_idempotency_key_replays_the_whole_batch(store: BlockingStore) -> None:
    specs = [item("a"), item("b", depends_on=[0])]
    made, replayed = store.create_batch(specs, owner="alice", idempotency_key="k")
    store.update_workload_status(made[0].id, Status.RUNNING)
    again, replayed = store.create_batch(
        [item("a"), item("b", depends_on=[0])], owner="alice", idempotency_key="k"
    )
    assert replayed
    assert [w.id for w in again] == [w.id for w in made]
    assert again[0].status is Status.RUNNING  # as it is now
    with pytest.raises(IdempotencyKeyReusedError):
        store.create_batch(specs, owner="alice", max_running=1, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReusedError):
        store.create_workload(SPEC, owner="alice", idempotency_key="k")
    store.create_workload(SPEC, owner="alice", idempotency_key="single")
    with pytest.raises(IdempotencyKeyReusedError):
        store.create_batch([item()], owner="alice", idempotency_key="single")
    other, replayed = store.create_batch(specs, owner="bob", idempotency_key="k")
    assert not replayed and other[0].id != made[0].id
    assert len(store.list_workloads().items) == 5


# --- users and API keys; pending reasons ---------------------------------------------


def digest(n: int) -> str:
    return f"{n:064x}"


def test_api_keys_are_found_listed_and_revoked(store: BlockingStore) -> None:
    from corral.store.base import Principal
    from corral.store.errors import TokenNotFoundError

    alice = store.create_api_key(user="alice", admin=False, key_sha256=digest(1))
    root = store.create_api_key(
        user="root", admin=True, key_sha256=digest(2), description="first admin"
    )
    assert (alice.user, alice.admin, alice.unix_user, alice.revoked_at) == (
        "alice", False, None, None
    )  # fmt: skip
    assert (root.admin, root.description) == (True, "first admin")
    assert store.find_api_key(digest(1)) == Principal(key_id=alice.id, user="alice", admin=False)
    assert store.find_api_key(digest(2)) == Principal(key_id=root.id, user="root", admin=True)
    assert store.find_api_key(digest(3)) is None
    assert store.list_api_keys() == [root, alice]  # newest first
    revoked = store.revoke_api_key(alice.id)
    assert revoked.revoked_at is not None and revoked.revoked_at >= revoked.created_at
    assert revoked.model_dump(exclude={"revoked_at"}) == alice.model_dump(exclude={"revoked_at"})
    assert store.revoke_api_key(alice.id) == revoked  # once: a second call changes nothing
    assert store.find_api_key(digest(1)) is None
    assert store.list_api_keys() == [root, revoked]
    with pytest.raises(TokenNotFoundError):
        store.revoke_api_key("01m8n0ne000000000000000000")


def test_a_key_has_one_role_and_admin_is_derived(store: BlockingStore) -> None:
    """``role``: ``user``, ``admin`` (also from ``admin=True``) or ``metrics``, found,
    listed and counted (a metrics key makes no one an admin) as stored."""
    from corral.model import KeyRole
    from corral.store.base import Account, Principal

    prom = store.create_api_key(user="prom", role=KeyRole.METRICS, key_sha256=digest(1))
    root = store.create_api_key(user="root", role=KeyRole.ADMIN, key_sha256=digest(2))
    old = store.create_api_key(user="old", admin=True, key_sha256=digest(3))
    plain = store.create_api_key(user="alice", key_sha256=digest(4))
    roles = [(t.user, t.role, t.admin) for t in store.list_api_keys()]
    assert roles == [
        ("alice", "user", False),
        ("old", "admin", True),
        ("root", "admin", True),
        ("prom", "metrics", False),
    ]
    found = store.find_api_key(digest(1))
    assert found == Principal(prom.id, "prom", admin=False, metrics=True)
    assert found is not None and found.role is KeyRole.METRICS
    assert store.find_api_key(digest(2)) == Principal(root.id, "root", admin=True)
    assert store.find_api_key(digest(3)) == Principal(old.id, "old", admin=True)
    assert store.find_api_key(digest(4)) == Principal(plain.id, "alice", admin=False)
    assert store.account_of("prom") == Account(None, False)
    with pytest.raises(ValueError, match="an admin key cannot have the role 'metrics'"):
        store.create_api_key(user="x", admin=True, role=KeyRole.METRICS, key_sha256=digest(5))
    assert len(store.list_api_keys()) == 4


def test_a_users_unix_account_is_fixed_once_given(store: BlockingStore) -> None:
    from corral.store.errors import UnixUserConflictError

    assert store.create_api_key(user="dave", admin=False, key_sha256=digest(1)).unix_user is None
    mapped = store.create_api_key(user="dave", admin=False, key_sha256=digest(2), unix_user="svc")
    assert mapped.unix_user == "svc"
    with pytest.raises(UnixUserConflictError, match="'svc'"):
        store.create_api_key(user="dave", admin=False, key_sha256=digest(3), unix_user="other")
    assert store.find_api_key(digest(3)) is None and len(store.list_api_keys()) == 2
    plain = store.create_api_key(user="dave", admin=False, key_sha256=digest(4))
    assert plain.unix_user == "svc"  # a key naming none keeps it
    assert {t.unix_user for t in store.list_api_keys()} == {"svc"}  # every key shows the user's


def test_account_of_says_who_runs_as_what_and_who_is_admin(store: BlockingStore) -> None:
    from corral.store.base import Account

    assert store.account_of("nobody") == Account(None, False)
    store.create_api_key(user="erin", admin=False, key_sha256=digest(1), unix_user="erin")
    assert store.account_of("erin") == Account("erin", False)
    admin_key = store.create_api_key(user="erin", admin=True, key_sha256=digest(2))
    assert store.account_of("erin") == Account("erin", True)
    store.revoke_api_key(admin_key.id)
    assert store.account_of("erin") == Account("erin", False)


def test_pending_reasons_change_pending_workloads_only_without_events(store: BlockingStore) -> None:
    waiting, _ = store.create_workload(SPEC, owner="alice")
    running, _ = store.create_workload(SPEC, owner="alice")
    running = store.update_workload_status(running.id, Status.RUNNING)
    store.set_pending_reasons(
        [
            (waiting.id, "first"),
            (running.id, "not pending"),
            ("01m8n0ne000000000000000000", "no such workload"),
            (waiting.id, "waiting for 2 cpus"),  # the last one given wins
        ]
    )
    assert store.get_workload(waiting.id).reason == "waiting for 2 cpus"
    assert store.get_workload(running.id) == running
    assert len(store.list_events(waiting.id)) == 1
    store.set_pending_reasons([])
    assert store.get_workload(waiting.id).model_dump(exclude={"reason"}) == waiting.model_dump(
        exclude={"reason"}
    )


def test_events_after_an_id_are_every_owners_oldest_first_with_name_and_labels(
    store: BlockingStore,
) -> None:
    a, _ = store.create_workload(
        owner="alice", spec=WorkloadCreate(command=["true"], name="a", labels={"team": "ml"})
    )
    b, _ = store.create_workload(owner="bob", spec=WorkloadCreate(command=["true"]))
    store.update_workload_status(a.id, Status.RUNNING, actor="scheduler")
    store.update_workload_status(b.id, Status.KILLED, actor="bob")
    store.update_workload_status(a.id, Status.COMPLETED, exit_code=0, actor="scheduler")
    every = store.list_events_after(0)
    assert [(e.workload_id, e.seq) for e in every] == [
        (a.id, 1),
        (b.id, 1),
        (a.id, 2),
        (b.id, 2),
        (a.id, 3),
    ]
    ids = [e.id for e in every]
    assert ids == sorted(set(ids))
    assert every[0].name == "a" and every[0].labels == {"team": "ml"}
    assert every[1].name is None and every[1].labels == {}
    assert (every[3].from_status, every[3].to_status, every[3].actor) == (
        Status.PENDING,
        Status.KILLED,
        "bob",
    )
    assert every[3].reason == store.list_events(b.id)[1].reason
    assert every[4].at == store.list_events(a.id)[2].at
    # after an id: strictly after it; a limit: the oldest first
    assert store.list_events_after(ids[1]) == every[2:]
    assert store.list_events_after(ids[1], limit=2) == every[2:4]
    assert store.list_events_after(ids[-1]) == []


def test_events_after_filter_by_owner_workload_label_and_status(store: BlockingStore) -> None:
    a, _ = store.create_workload(
        owner="alice", spec=WorkloadCreate(command=["true"], labels={"team": "ml", "x": "1"})
    )
    b, _ = store.create_workload(
        owner="alice", spec=WorkloadCreate(command=["true"], labels={"team": "web"})
    )
    c, _ = store.create_workload(
        owner="bob", spec=WorkloadCreate(command=["true"], labels={"team": "ml"})
    )
    for w in (a, b, c):
        store.update_workload_status(w.id, Status.RUNNING, actor="scheduler")
    store.update_workload_status(b.id, Status.FAILED, exit_code=1, actor="scheduler")

    def seen(**filters: Any) -> list[tuple[str, int]]:
        return [(e.workload_id, e.seq) for e in store.list_events_after(0, EventFilter(**filters))]

    assert seen(owner="bob") == [(c.id, 1), (c.id, 2)]
    assert seen(owner="carol") == []
    assert seen(workload_ids=[b.id, a.id]) == [
        (a.id, 1),
        (b.id, 1),
        (a.id, 2),
        (b.id, 2),
        (b.id, 3),
    ]
    assert seen(labels=[("team", "ml")]) == [(a.id, 1), (c.id, 1), (a.id, 2), (c.id, 2)]
    assert seen(labels=[("team", "ml"), ("x", "1")]) == [(a.id, 1), (a.id, 2)]
    assert seen(labels=[("team", "ml")], owner="alice") == [(a.id, 1), (a.id, 2)]
    assert seen(statuses=[Status.RUNNING]) == [(a.id, 2), (b.id, 2), (c.id, 2)]
    assert seen(statuses=[Status.FAILED, Status.PENDING], owner="alice") == [
        (a.id, 1),
        (b.id, 1),
        (b.id, 3),
    ]
    assert seen(workload_ids=["0" * 26]) == []


@pytest.mark.parametrize(
    ("after", "limit"),
    [(-1, 10), (2**63, 10), (0, 0), (0, 501)],
    ids=["negative", "too-large", "zero", "too-many"],
)
def test_events_after_checks_its_arguments(store: BlockingStore, after: int, limit: int) -> None:
    with pytest.raises(InvalidInputError):
        store.list_events_after(after, limit=limit)


def test_events_until_an_id_and_every_events_id(store: BlockingStore) -> None:
    a, _ = store.create_workload(owner="alice", spec=SPEC)
    b, _ = store.create_workload(owner="bob", spec=SPEC)
    store.update_workload_status(a.id, Status.RUNNING, actor="scheduler")
    every = store.list_events_after(0)
    assert store.list_events_after(0, until_id=every[1].id) == every[:2]
    assert store.list_events_after(0, EventFilter(owner="alice"), until_id=every[1].id) == every[:1]
    assert store.event_ids_after(0) == [e.id for e in every]
    assert store.event_ids_after(every[0].id, limit=1) == [every[1].id]
    assert b.id == every[1].workload_id


def test_the_queue_head_is_in_scheduling_order_without_dependants(store: BlockingStore) -> None:
    """``queue_head``: pending, without dependencies, higher priority first then the
    oldest, whatever the number pending (a standby's and an API server's queue)."""
    low = [store.create_workload(owner="alice", spec=SPEC)[0] for _ in range(3)]
    high, _ = store.create_workload(owner="bob", spec=WorkloadCreate(command=["true"], priority=5))
    store.create_workload(
        owner="alice", spec=WorkloadCreate(command=["true"], depends_on=[low[0].id])
    )
    started, _ = store.create_workload(owner="alice", spec=SPEC)
    store.update_workload_status(started.id, Status.RUNNING, actor="scheduler")
    head, length = store.queue_head(3)
    assert [w.id for w in head] == [high.id, low[0].id, low[1].id] and length == 4
    head, length = store.queue_head(10, owner="alice")
    assert [w.id for w in head] == [w.id for w in low] and length == 3
    assert store.queue_head(10, owner="carol") == ([], 0)
