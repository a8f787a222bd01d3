"""A hypothesis state machine over two users and an admin, through the HTTP API: no
sequence of creates, kills, status changes, reads and listings lets a user see, list,
kill or read another user's workload, and admins see everything."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from corral.api import create_app
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import add_key

USERS = ("alice", "bob")
WHO = st.sampled_from([*USERS, "root"])
EXAMPLES = {"sqlite": 60, "postgresql": 20}
"""Examples per database (fewer on PostgreSQL, whose requests cost more here: see
test_api_stateful.py)."""
READS = ("", "/events", "/logs", "/logs?tail=1")


class OwnersMachine(RuleBasedStateMachine):
    clients: dict[str, SyncASGIClient]
    examples_run = 0

    workloads = Bundle("workloads")

    def __init__(self) -> None:
        super().__init__()
        OwnersMachine.examples_run += 1
        self.run = f"r{OwnersMachine.examples_run}"
        self.owner: dict[str, str] = {}  # id -> owner
        self.status: dict[str, str] = {}

    @rule(target=workloads, who=WHO, key=st.sampled_from([None, "k1", "k2"]))
    def create(self, who: str, key: str | None) -> str:
        headers = {"Idempotency-Key": f"{self.run}-{key}"} if key else {}
        r = self.clients[who].post(
            "/v1/workloads",
            json={"command": ["true"], "labels": {"run": self.run}},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        body = r.json()
        wid = body["id"]
        assert body["owner"] == who
        if wid in self.owner:  # a replay: only ever of the same user's own workload
            assert self.owner[wid] == who and r.headers.get("idempotent-replayed") == "true"
        else:
            self.owner[wid] = who
            self.status[wid] = "pending"
        return str(wid)

    @rule(wid=workloads, who=WHO, read=st.sampled_from(READS))
    def read(self, wid: str, who: str, read: str) -> None:
        r = self.clients[who].get(f"/v1/workloads/{wid}{read}")
        if who == "root" or self.owner[wid] == who:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 404
            assert wid not in r.text.replace(f"no workload has id '{wid}'", "")

    @rule(wid=workloads, who=WHO)
    def kill(self, wid: str, who: str) -> None:
        r = self.clients[who].delete(f"/v1/workloads/{wid}")
        if who != "root" and self.owner[wid] != who:
            assert r.status_code == 404
        elif self.status[wid] in ("pending", "running"):
            assert r.status_code == 200, r.text
            self.status[wid] = "killed"
        else:
            assert r.status_code == 409

    @rule(wid=workloads, who=WHO, to=st.sampled_from(["running", "completed", "failed"]))
    def put_status(self, wid: str, who: str, to: str) -> None:
        r = self.clients[who].put(f"/v1/workloads/{wid}/status", json={"status": to})
        if who != "root":
            assert r.status_code == (403 if self.owner[wid] == who else 404), r.text
            return
        allowed = {"pending": {"running"}, "running": {"completed", "failed"}}
        if to in allowed.get(self.status[wid], set()):
            assert r.status_code == 200, r.text
            self.status[wid] = to
        else:
            assert r.status_code == 409

    @invariant()
    def lists_hold_exactly_what_each_may_see(self) -> None:
        for who in (*USERS, "root"):
            mine = {w for w, o in self.owner.items() if o == who}
            assert self._listed(who, all_users=False) == mine, who
        assert self._listed("root", all_users=True) == set(self.owner)
        for status in ("pending", "killed"):
            for who in USERS:
                expected = {
                    w for w, o in self.owner.items() if o == who and self.status[w] == status
                }
                assert self._listed(who, all_users=False, status=status) == expected

    def _listed(self, who: str, *, all_users: bool, status: str | None = None) -> set[str]:
        seen: set[str] = set()
        cursor = ""
        while True:
            params: dict[str, object] = {"label": f"run={self.run}", "limit": 3, "cursor": cursor}
            if all_users:
                params["all_users"] = "true"
            if status:
                params["status"] = status
            page = self.clients[who].get("/v1/workloads", params=params).json()
            seen.update(w["id"] for w in page["items"])
            assert all(all_users or w["owner"] == who for w in page["items"])
            cursor = page["next_cursor"] or ""
            if not cursor:
                return seen


def test_no_sequence_leaks_across_users(
    store: BlockingStore, store_kind: str, tmp_path: Path
) -> None:
    examples = EXAMPLES[store_kind]
    OwnersMachine.examples_run = 0  # counted per test (each has a database of its own)
    keys = {name: add_key(store, name) for name in USERS}
    keys["root"] = add_key(store, "root", admin=True)
    app = create_app(store.inner, data_dir=tmp_path)
    OwnersMachine.clients = {
        name: SyncASGIClient(app, token=key, run=store.run) for name, key in keys.items()
    }
    try:
        run_state_machine_as_test(
            OwnersMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        assert OwnersMachine.examples_run >= examples
    finally:
        for client in OwnersMachine.clients.values():
            client.close()
