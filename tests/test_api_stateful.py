"""A hypothesis state machine drives the HTTP API against a model of the table: no
illegal transition accepted, no legal one refused, statuses always the model's."""

from __future__ import annotations

import itertools
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

from corral.model import TERMINAL, Status, valid_transition
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import add_key, app_client

EXAMPLES = {"sqlite": 150, "postgresql": 50}
"""Examples per database: PostgreSQL's requests cost ~2.5 times SQLite's here (a
commit is a round trip and an fsync), so it runs a third of them to stay within the
suite's time; the machine is the same code over either store."""
STATUSES = st.sampled_from([s.value for s in Status] + ["paused", ""])


class APIStateMachine(RuleBasedStateMachine):
    api: SyncASGIClient  # one app and database for all examples; ids keep them apart

    workloads = Bundle("workloads")

    examples_run = 0

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, Status] = {}
        APIStateMachine.examples_run += 1
        self.run_label = f"run={APIStateMachine.examples_run}"

    @rule(target=workloads, priority=st.integers(-5, 5))
    def create(self, priority: int) -> str:
        response = self.api.post(
            "/v1/workloads",
            json={
                "command": ["true"],
                "priority": priority,
                "labels": dict([self.run_label.split("=")]),
            },
        )
        assert response.status_code == 201
        body = response.json()
        assert body["status"] == "pending"
        self.model[body["id"]] = Status.PENDING
        return str(body["id"])

    @rule(wid=workloads, new_status=STATUSES)
    def put_status(self, wid: str, new_status: str) -> None:
        response = self.api.put(f"/v1/workloads/{wid}/status", json={"status": new_status})
        if new_status not in {s.value for s in Status}:
            assert response.status_code == 422
            return
        current = self.model[wid]
        if valid_transition(current, new_status):
            assert response.status_code == 200, response.text
            assert response.json()["status"] == new_status
            self.model[wid] = Status(new_status)
        else:
            assert response.status_code == 409, response.text
            body = response.json()
            assert body["current_status"] == current.value
            assert body["requested_status"] == new_status

    @rule(wid=workloads)
    def kill(self, wid: str) -> None:
        response = self.api.delete(f"/v1/workloads/{wid}")
        if self.model[wid] in TERMINAL:
            assert response.status_code == 409
            assert response.json()["current_status"] == self.model[wid].value
        else:
            assert response.status_code == 200
            self.model[wid] = Status.KILLED

    @rule(wids=st.lists(workloads, max_size=4))
    def kill_many(self, wids: list[str]) -> None:
        response = self.api.post("/v1/workloads/kill", json={"ids": wids})
        if not wids:
            assert response.status_code == 422
            return
        assert response.status_code == 200, response.text
        body = response.json()
        unique = list(dict.fromkeys(wids))
        active = [w for w in unique if self.model[w] not in TERMINAL]
        assert [w["id"] for w in body["killed"]] == active
        assert [(w["id"], w["status"]) for w in body["not_killed"]] == [
            (w, self.model[w].value) for w in unique if w not in active
        ]
        assert body["not_found"] == []
        self.model.update(dict.fromkeys(active, Status.KILLED))

    @rule(wid=workloads)
    def get_and_events(self, wid: str) -> None:
        assert self.api.get(f"/v1/workloads/{wid}").json()["status"] == self.model[wid].value
        events = self.api.get(f"/v1/workloads/{wid}/events").json()["items"]
        assert events[0]["type"] == "created"
        assert events[-1]["to_status"] == self.model[wid].value
        for before, after in itertools.pairwise(events):
            assert valid_transition(before["to_status"], after["to_status"])
            assert after["from_status"] == before["to_status"]

    @invariant()
    def statuses_match_the_model(self) -> None:
        if not self.model:
            return
        seen: dict[str, str] = {}
        cursor = None
        while True:
            params: dict[str, object] = {"limit": 7, "label": self.run_label}
            if cursor:
                params["cursor"] = cursor
            page = self.api.get("/v1/workloads", params=params).json()
            seen.update((w["id"], w["status"]) for w in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == {wid: status.value for wid, status in self.model.items()}


def test_api_state_machine(store: BlockingStore, store_kind: str, tmp_path: Path) -> None:
    examples = EXAMPLES[store_kind]
    APIStateMachine.examples_run = 0  # counted per test (each has a database of its own)
    key = add_key(store, "admin", admin=True)
    APIStateMachine.api = app_client(store, tmp_path, token=key)
    try:
        run_state_machine_as_test(
            APIStateMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        print(f"hypothesis: {APIStateMachine.examples_run} state-machine examples run")
        assert APIStateMachine.examples_run >= examples
    finally:
        APIStateMachine.api.close()
