"""``GET /readyz``: the database, the executor and the scheduler's role, without a key;
503 naming the part that is not ready."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from corral.api.app import create_app
from corral.executors.base import Capacity
from corral.executors.local import LocalExecutor
from corral.scheduler import Scheduler
from corral.store.postgres import PostgresStore
from corral.store.sqlite_async import AsyncSQLiteStore
from tests import pg
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import app_client


def test_ready_without_a_key(store: BlockingStore, tmp_path: Path) -> None:
    client = app_client(store, tmp_path)  # no key: probes send none
    try:
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"database": "ok", "executor": "ok", "scheduler": "never"}
    finally:
        client.close()


def test_an_active_scheduler_is_reported(store: BlockingStore, tmp_path: Path) -> None:
    scheduler = Scheduler(
        store.inner, LocalExecutor(tmp_path, capacity=Capacity(1, 64, 0), kill_grace_seconds=1.0)
    )
    client = app_client(store, tmp_path, scheduler=scheduler)
    try:
        store.run(scheduler.start())
        assert client.get("/readyz").json()["scheduler"] == "active"
    finally:
        store.run(scheduler.stop())
        client.close()


def test_a_closed_database_is_503(store: BlockingStore, tmp_path: Path) -> None:
    client = app_client(store, tmp_path)
    try:
        store.run(store.inner.close())
        response = client.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json() == {"database": "down", "executor": "ok", "scheduler": "never"}
    finally:
        client.close()


@pytest.mark.parametrize("fault", ["removed", "replaced"])
def test_a_sqlite_file_that_is_gone_is_503(tmp_path: Path, fault: str) -> None:
    """``SELECT 1`` reads no file: a database file removed (the open connections
    would go on writing to an inode gone at the next start) or replaced is not ready
    all the same (nor one this process may not read and write: ``SQLiteStore.ping``)."""
    store = BlockingStore(AsyncSQLiteStore(tmp_path / "corral.db"))
    client = app_client(store, tmp_path)
    try:
        assert client.get("/readyz").status_code == 200
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store.inner.path}{suffix}").unlink(missing_ok=True)
        if fault == "replaced":
            store.inner.path.write_bytes(b"")
        for _ in range(4):  # from every reader thread
            response = client.get("/readyz")
            assert response.status_code == 503, response.text
            assert response.json()["database"] == "down"
    finally:
        client.close()
        store.close()


class SilentProxy:
    """A TCP proxy to ``port`` on the loopback that can go silent: after ``silence``,
    what either side sends is dropped, as by a database host that stopped answering
    (no refusal, no reset: only the probe's own timeout ends the wait)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.silent = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.silent.is_set():
                    sink.sendall(data)


def test_a_database_that_stops_answering_is_503(pg_server: str, tmp_path: Path) -> None:
    """PostgreSQL behind a proxy that goes silent: the probe gives up after
    ``READY_TIMEOUT_SECONDS`` (not the pool's 30 s) and says the database is down."""
    url = urlsplit(pg.database_url(tmp_path))
    proxy = SilentProxy(url.port or 5432)
    proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    store = BlockingStore(PostgresStore(proxied))
    client = SyncASGIClient(create_app(store.inner, data_dir=tmp_path), run=store.run)
    try:
        assert client.get("/readyz").status_code == 200
        proxy.silence()
        response = client.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json() == {"database": "down", "executor": "ok", "scheduler": "never"}
    finally:
        client.close()
        proxy.close()  # the store's connections fail at once: its pool closes
        with contextlib.suppress(Exception):
            store.close()
        if pg.current is not None:
            pg.current.drop(tmp_path)


def test_readyz_is_in_the_api_document(store: BlockingStore, tmp_path: Path) -> None:
    client = app_client(store, tmp_path)
    try:
        operation = client.get("/openapi.json").json()["paths"]["/readyz"]["get"]
        assert "security" not in operation
        assert "application/json" in operation["responses"]["503"]["content"]
    finally:
        client.close()
