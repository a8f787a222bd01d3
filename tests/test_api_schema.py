"""schemathesis fuzzes every operation of the app's own OpenAPI document, on each
database: no 5xx, and every response (status, content type, body) conforms to the
document."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings

from corral.api import create_app
from corral.api.guard import LOOPBACK_HOSTS, AccessPolicy
from corral.api.limits import MAX_BODY_BYTES
from corral.ids import looks_like_id
from corral.model import BATCH_MAX_ITEMS, DEPENDS_ON_MAX_ENTRIES, UNIX_USER_RE
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.asgi import ASGIApp, on_loop
from tests.blocking import BlockingStore
from tests.conftest import add_key

_policy = AccessPolicy(allowed_hosts=LOOPBACK_HOSTS | {"testserver"})


class _Served:
    """The ASGI app schemathesis calls: the current test's app (``served``), run on
    its store's loop (schemathesis runs requests on a loop of its own; a PostgreSQL
    store's connections live on the store's). The lifespan is answered here, as
    httpx's in-process transport does for the other tests: no scheduler runs."""

    app: ASGIApp | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.app is not None, "a test of this module without the served fixture"
        await self.app(scope, receive, send)


_served = _Served()


def _load_schema() -> schemathesis.BaseSchema:
    """The app's own document, read from an app over a store of its own (the document
    does not depend on the store; each test's app is its own, on each database)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = BlockingStore(AsyncSQLiteStore(Path(tmp) / "corral.db"))
        try:
            app = create_app(store.inner, data_dir=Path(tmp), policy=_policy)
            _served.app = on_loop(app, store.loop)
            return schemathesis.openapi.from_asgi("/openapi.json", _served)
        finally:
            _served.app = None
            store.close()


schema = _load_schema()


@pytest.fixture
def served(store: BlockingStore, tmp_path: Path) -> Iterator[str]:
    """The app over the test's store (on each database) answers schemathesis; its
    admin key, which every generated request carries (``_AdminKey``)."""
    key = add_key(store, "admin", admin=True)
    app = create_app(store.inner, data_dir=tmp_path, policy=_policy)
    _served.app = on_loop(app, store.loop)
    _AdminKey.key = key
    yield key
    _served.app = None


@schema.auth()
class _AdminKey:
    """Every generated request carries the admin key (schemathesis's own auth hook, so
    it knows the header is set for it, not by the case)."""

    key = ""

    def get(self, case: schemathesis.Case, context: object) -> str:
        return self.key

    def set(self, case: schemathesis.Case, data: str, context: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _allowed_reference(entry: object, in_batch: bool) -> bool:
    """An entry of ``depends_on`` that the schema allows (an id; in a batch, an index)."""
    if isinstance(entry, str):
        return looks_like_id(entry)
    if not in_batch or isinstance(entry, bool) or not isinstance(entry, int | float):
        return False
    return float(entry).is_integer() and 0 <= entry < BATCH_MAX_ITEMS


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case, served: str) -> None:
    # A reused Idempotency-Key with another body is a 422 by design (spec §3), which
    # schemathesis would count as valid data rejected; test_api covers the header.
    if case.headers:
        case.headers.pop("Idempotency-Key", None)
        case.headers.pop("idempotency-key", None)
    # A Unix user must exist on the server's machine (and the server run as root): a
    # fact the schema cannot state; test_security covers it.
    body = case.body
    # A body over the server's limit is a 413 before anything reads it; schemathesis
    # builds such bodies from the per-argument limits, and counts 413 as no rejection.
    assume(body is None or len(json.dumps(body, default=str)) < MAX_BODY_BYTES)
    if isinstance(body, dict) and UNIX_USER_RE.fullmatch(str(body.get("unix_user"))):
        body["unix_user"] = None
    # Dependencies must name workloads of the caller (and, in a batch, not form a
    # cycle): facts the schema cannot state either; test_dependencies covers them.
    # Entries the schema allows go; those it refuses stay, to be refused.
    if isinstance(body, dict):
        items = body.get("items")
        items = items if isinstance(items, list) else []  # (an invalid body: any type)
        for spec, in_batch in [(body, False), *((i, True) for i in items)]:
            deps = spec.get("depends_on") if isinstance(spec, dict) else None
            if isinstance(deps, list) and len(deps) <= DEPENDS_ON_MAX_ENTRIES:
                spec["depends_on"] = [d for d in deps if not _allowed_reference(d, in_batch)]
    # A followed event stream never ends (test_events_live reads them); its page does.
    if case.path == "/v1/events" and isinstance(case.query, dict):
        case.query.pop("follow", None)
    case.call_and_validate()
