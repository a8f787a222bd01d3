"""The request log and the log of unexpected errors, through the real app in process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from corral.api import create_app
from corral.errors import CorralError
from corral.serverlog import extra_fields
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import add_key

PROBLEM = "application/problem+json"


class OddError(CorralError):
    """A domain error no handler maps."""


@pytest.fixture
def app(store: BlockingStore, tmp_path: Path) -> FastAPI:
    app = create_app(store.inner, data_dir=tmp_path, max_body_bytes=1000)

    @app.post("/test/crash")
    async def crash() -> None:
        raise RuntimeError("something broke")

    @app.post("/test/odd")
    async def odd() -> None:
        raise OddError("an error nobody maps")

    return app


@pytest.fixture
def keys(store: BlockingStore) -> dict[str, str]:
    return {
        "root": add_key(store, "root", admin=True),
        "alice": add_key(store, "alice"),
        "bob": add_key(store, "bob", admin=True),
    }


@pytest.fixture
def client(
    app: FastAPI, store: BlockingStore, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> Iterator[SyncASGIClient]:
    caplog.set_level(logging.INFO, logger="corral")
    c = SyncASGIClient(app, raise_app_exceptions=False, token=keys["root"], run=store.run)
    yield c
    c.close()


def as_user(keys: dict[str, str], name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[name]}"}


def requests(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        extra_fields(r)
        for r in caplog.records
        if r.name == "corral.api" and r.getMessage() == "request"
    ]


def test_state_changing_requests_are_logged_with_user_id_and_name(
    client: SyncASGIClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    created = client.post(
        "/v1/workloads",
        json={"command": ["true"], "name": "train"},
        headers=as_user(keys, "alice"),
    )
    wid = created.json()["id"]
    client.get(f"/v1/workloads/{wid}")
    client.get("/v1/workloads")
    client.put(f"/v1/workloads/{wid}/status", json={"status": "running"})
    client.delete(f"/v1/workloads/{wid}", headers=as_user(keys, "bob"))
    logged = requests(caplog)
    for record in logged:
        assert isinstance(record.pop("duration_ms"), float)
    assert logged == [
        {
            "method": "POST",
            "path": "/v1/workloads",
            "status": 201,
            "user": "alice",
            "id": wid,
            "name": "train",
        },
        {
            "method": "PUT",
            "path": f"/v1/workloads/{wid}/status",
            "status": 200,
            "user": "root",
            "id": wid,
        },
        {
            "method": "DELETE",
            "path": f"/v1/workloads/{wid}",
            "status": 200,
            "user": "bob",
            "id": wid,
        },
    ]


def test_refused_requests_are_logged_too(
    client: SyncASGIClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The log is outside the body limit and the guard: a refused request is logged,
    with no user when it had no valid key."""
    too_big = client.post("/v1/workloads", json={"command": ["echo", "x" * 2000]})
    assert too_big.status_code == 413
    json = {"Content-Type": "application/json"}
    assert client.post("/v1/workloads", content=b"{", headers=json).status_code == 422
    assert client.delete("/v1/workloads/nope").status_code == 404
    bad_key = {"Authorization": "Bearer corral_nope"}
    assert client.post("/v1/workloads", json={"command": ["x"]}, headers=bad_key).status_code == 401
    logged = [(r["method"], r["status"], r["user"], r.get("id")) for r in requests(caplog)]
    assert logged == [
        ("POST", 413, "root", None),  # the body limit runs after the key is checked
        ("POST", 422, "root", None),
        ("DELETE", 404, "root", "nope"),
        ("POST", 401, "-", None),
    ]


@pytest.mark.parametrize("path", ["/test/crash", "/test/odd"])
def test_an_unexpected_error_is_a_500_problem_and_a_logged_traceback(
    client: SyncASGIClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    response = client.post(path)
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:corral:problem:internal"
    assert "broke" not in response.text and "nobody" not in response.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    (error,) = errors
    assert error.levelname == "ERROR" and error.name == "corral.api"
    assert error.exc_info is not None and error.exc_info[1] is not None
    assert isinstance(error.exc_info[1], RuntimeError | OddError)
    assert extra_fields(error) == {"method": "POST", "path": path}
    assert [(r["path"], r["status"]) for r in requests(caplog)] == [(path, 500)]
