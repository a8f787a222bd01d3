"""schemathesis fuzzes every operation of the app's own OpenAPI document: no 5xx,
and every response (status, content type, body) conforms to the document."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings

from corral.api import create_app
from corral.api.guard import LOOPBACK_HOSTS, AccessPolicy
from corral.api.limits import MAX_BODY_BYTES
from corral.ids import looks_like_id
from corral.model import BATCH_MAX_ITEMS, DEPENDS_ON_MAX_ENTRIES, UNIX_USER_RE
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.blocking import BlockingStore
from tests.conftest import add_key

_tmp = Path(tempfile.mkdtemp(prefix="corral-schemathesis-"))
_store = BlockingStore(AsyncSQLiteStore(_tmp / "corral.db"))
_key = add_key(_store, "admin", admin=True)
_policy = AccessPolicy(allowed_hosts=LOOPBACK_HOSTS | {"testserver"})
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(_store.inner, data_dir=_tmp, policy=_policy)
)


@schema.auth()
class _AdminKey:
    """Every generated request carries the admin key (schemathesis's own auth hook, so
    it knows the header is set for it, not by the case)."""

    def get(self, case: schemathesis.Case, context: object) -> str:
        return _key

    def set(self, case: schemathesis.Case, data: str, context: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    _store.close()
    shutil.rmtree(_tmp, ignore_errors=True)


def _allowed_reference(entry: object, in_batch: bool) -> bool:
    """An entry of ``depends_on`` that the schema allows (an id; in a batch, an index)."""
    if isinstance(entry, str):
        return looks_like_id(entry)
    if not in_batch or isinstance(entry, bool) or not isinstance(entry, int | float):
        return False
    return float(entry).is_integer() and 0 <= entry < BATCH_MAX_ITEMS


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case) -> None:
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
    case.call_and_validate()
