"""``POST /v1/workloads/batch`` and the dependency fields, through the real app in
process (no executor: nothing runs; ``test_dependencies`` runs them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import FullDatabase, add_key, app_client
from tests.test_faults import rows

BATCH = "/v1/workloads/batch"
UNKNOWN = "01m8n0ne000000000000000000"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def nothing_stored(api: SyncASGIClient) -> bool:
    return api.get("/v1/workloads", params={"all_users": "true"}).json()["items"] == []


def test_a_batch_is_created_in_order(api: SyncASGIClient) -> None:
    body = {
        "items": [
            {"command": ["a"], "array_index": 0},
            {"command": ["b"], "array_index": 1, "depends_on": [0]},
            {"command": ["c"], "depends_on": [0, 1], "dependency_type": "afterany"},
        ],
        "max_running": 2,
    }
    response = api.post(BATCH, json=body)
    assert response.status_code == 201, response.text
    a, b, c = response.json()["items"]
    assert [w["command"] for w in (a, b, c)] == [["a"], ["b"], ["c"]]
    assert a["batch_id"] and a["batch_id"] == b["batch_id"] == c["batch_id"]
    assert {w["max_running"] for w in (a, b, c)} == {2}
    assert (a["array_index"], b["array_index"], c["array_index"]) == (0, 1, None)
    assert (b["depends_on"], c["depends_on"]) == ([a["id"]], [a["id"], b["id"]])
    assert (b["dependency_type"], c["dependency_type"]) == ("afterok", "afterany")
    assert all(w["status"] == "pending" for w in (a, b, c))
    assert api.get(f"/v1/workloads/{c['id']}").json() == c
    single = api.post("/v1/workloads", json={"command": ["d"], "depends_on": [c["id"]]})
    assert single.status_code == 201, single.text
    assert single.json()["depends_on"] == [c["id"]] and single.json()["batch_id"] is None


def test_an_item_naming_a_later_item_is_created(api: SyncASGIClient) -> None:
    """A forward reference (item 0 after item 1) is no cycle: 201, not a 500."""
    items = [{"command": ["b"], "depends_on": [1]}, {"command": ["a"]}]
    response = api.post(BATCH, json={"items": items})
    assert response.status_code == 201, response.text
    b, a = response.json()["items"]
    assert b["depends_on"] == [a["id"]]


@pytest.mark.parametrize(
    ("items", "where"),
    [
        ([{"command": ["a"]}] * 3 + [{"command": []}], "items[3].command: "),
        ([{"command": ["a"]}, {"command": ["b"], "depends_on": [1]}], "items[1].depends_on[0]: "),
        (
            [
                {"command": ["a"], "depends_on": [2]},
                {"command": ["b"]},
                {"command": ["c"]},
                {"command": ["d"], "depends_on": [3]},  # itself
            ],
            "items[3].depends_on[0]: ",
        ),
        ([{"command": ["a"], "depends_on": [1]}, {"command": ["b"], "depends_on": [0]}], "cycle"),
        ([{"command": ["a"], "depends_on": [7]}], "items[0].depends_on[0]: no item 7"),
        ([{"command": ["a"]}, {"command": ["b"], "depends_on": [UNKNOWN]}], "no workload"),
        ([{"command": ["a"], "depends_on": [True]}], "items[0].depends_on[0]: "),
        ([{"command": ["a"], "depends_on": ["x"]}], "is not a workload id"),
        ([{"command": ["a"], "depends_on": [0] * 101}], "items[0].depends_on: "),
        ([{"command": ["a"], "array_index": -1}], "items[0].array_index: "),
        ([{"command": ["a"], "dependency_type": "after"}], "items[0].dependency_type: "),
        ([], "items: "),
        ([{"command": ["a"]}] * 1001, "items: "),
    ],
)
def test_a_bad_item_refuses_the_batch_naming_it(
    api: SyncASGIClient, items: list[object], where: str
) -> None:
    body = problem(api.post(BATCH, json={"items": items}), 422)
    assert where in body["detail"], body["detail"]
    assert body["errors"] and body["type"] == "urn:corral:problem:invalid-input"
    assert nothing_stored(api)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"items": [{"command": ["a"]}], "max_running": 0}, "max_running: "),
        ({"items": [{"command": ["a"]}], "max_running": "2"}, "max_running: "),
        ({"items": [{"command": ["a"]}], "extra": 1}, "extra: "),
        ({}, "items: "),
    ],
)
def test_a_bad_batch_body_is_422(api: SyncASGIClient, body: dict[str, object], where: str) -> None:
    assert problem(api.post(BATCH, json=body), 422)["detail"].startswith(where)
    assert nothing_stored(api)


def test_dependencies_of_a_single_create_are_checked(api: SyncASGIClient) -> None:
    mine = api.post("/v1/workloads", json={"command": ["true"]}).json()
    cases = [
        ([UNKNOWN], f"depends_on[0]: no workload has id '{UNKNOWN}'"),
        ([mine["id"], 0], "depends_on[1]: Value error, an integer names another item of a batch"),
        (["01M8"], "depends_on[0]: Value error, '01M8' is not a workload id"),
    ]
    for depends_on, detail in cases:
        body = {"command": ["true"], "depends_on": depends_on}
        got = problem(api.post("/v1/workloads", json=body), 422)["detail"]
        assert got.startswith(detail), got
    assert len(api.get("/v1/workloads").json()["items"]) == 1


def test_another_users_workloads_are_unknown_dependencies(
    api: SyncASGIClient, store: BlockingStore, tmp_path: Path
) -> None:
    theirs = api.post("/v1/workloads", json={"command": ["true"]}).json()  # the admin's
    bob = app_client(store, tmp_path, token=add_key(store, "bob"))
    try:
        body = {"command": ["true"], "depends_on": [theirs["id"]]}
        detail = problem(bob.post("/v1/workloads", json=body), 422)["detail"]
        assert detail == f"depends_on[0]: no workload has id {theirs['id']!r}"
        batch = {"items": [{"command": ["true"]}, body]}
        detail = problem(bob.post(BATCH, json=batch), 422)["detail"]
        assert detail == f"items[1].depends_on[0]: no workload has id {theirs['id']!r}"
        assert bob.get("/v1/workloads").json()["items"] == []
        own = bob.post(BATCH, json={"items": [{"command": ["true"]}]}).json()["items"][0]
        assert own["owner"] == "bob"
    finally:
        bob.close()


def test_a_batch_idempotency_key_replays_it(api: SyncASGIClient) -> None:
    body = {"items": [{"command": ["a"]}, {"command": ["b"], "depends_on": [0]}]}
    key = {"Idempotency-Key": "nightly-batch"}
    first = api.post(BATCH, json=body, headers=key)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = api.post(BATCH, json=body, headers=key)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = {"items": [{"command": ["a"]}]}
    assert "nightly-batch" in problem(api.post(BATCH, json=other, headers=key), 422)["detail"]
    single = api.post("/v1/workloads", json={"command": ["a"]}, headers=key)
    assert problem(single, 422)["type"] == "urn:corral:problem:idempotency-key-reused"
    long_key = {"Idempotency-Key": "k" * 256}
    assert "Idempotency-Key" in problem(api.post(BATCH, json=body, headers=long_key), 422)["detail"]
    assert len(api.get("/v1/workloads").json()["items"]) == 2


def test_a_batch_body_must_be_json_and_fit(store: BlockingStore, tmp_path: Path) -> None:
    api = app_client(store, tmp_path, token=add_key(store, "alice"), max_body_bytes=2000)
    try:
        text = api.post(BATCH, content=b'{"items": [{"command": ["true"]}]}')
        assert "application/json" in problem(text, 415)["detail"]
        big = {"items": [{"command": ["echo", "x" * 100]}] * 30}
        problem(api.post(BATCH, json=big), 413)
        assert api.get("/v1/workloads").json()["items"] == []
    finally:
        api.close()


def test_a_full_disk_stores_none_of_a_batch(
    api: SyncASGIClient, store: BlockingStore, full_database: FullDatabase
) -> None:
    full_database.fill()
    before = rows(store)
    body = {"items": [{"command": ["echo", "y" * 2000], "labels": {"a": "b"}}] * 20}
    assert problem(api.post(BATCH, json=body), 507)["type"] == "urn:corral:problem:storage-full"
    assert rows(store) == before


def test_openapi_lists_the_batch_route(api: SyncASGIClient) -> None:
    doc = api.get("/openapi.json").json()
    operation = doc["paths"]["/v1/workloads/batch"]["post"]
    assert operation["operationId"] == "create_workloads"
    assert operation["tags"] == ["workloads"]
    assert operation["security"] == [{"bearer": []}]
    assert {"201", "413", "415", "422", "503", "507"} <= set(operation["responses"])
    assert operation["parameters"][0]["name"] == "Idempotency-Key"
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"] == "#/components/schemas/WorkloadBatch"
    components = doc["components"]["schemas"]
    item = components["WorkloadBatchItem"]["properties"]["depends_on"]["items"]
    assert {alt["type"] for alt in item["anyOf"]} == {"string", "integer"}
    single = components["WorkloadCreate"]["properties"]["depends_on"]["items"]
    assert single["type"] == "string" and "pattern" in single
    created = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["$ref"].endswith("/WorkloadBatchCreated")
    workload = components["Workload"]["properties"]
    assert {"depends_on", "dependency_type", "array_index", "batch_id", "max_running"} <= set(
        workload
    )
