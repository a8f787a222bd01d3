"""``corral serve``: build the store, scheduler and app, and run uvicorn.

**The advertised URL** (``advertised_url``): where the other servers of a shared
(PostgreSQL) database reach this one, to forward it the requests for the logs it
keeps; stored in its ``servers`` row. ``--advertise-url`` when given (checked at
start: ``http(s)://HOST[:PORT]``, nothing else). Else the listener's
``http(s)://HOST:PORT``, where a wildcard ``--host`` (``0.0.0.0``, ``::``) gives way
to the first name that other machines may reach and this server's host guard
accepts: the machine's FQDN (when it is not a loopback name: many machines call
themselves ``localhost``) if it is among the ``--allowed-host`` names (or ``*`` is),
else the first ``--allowed-host`` name that is not a loopback one; failing both, the
FQDN as it is. Then, on a shared database only (on SQLite no other server asks):

- a URL whose host the guard would refuse (not loopback, not among the
  ``--allowed-host`` names) is refused at start, saying to add it to
  ``--allowed-host``: every forwarded request would otherwise get a 400;
- a loopback URL while ``--host`` is not loopback is a warning at start, naming
  ``--advertise-url``. A warning, not a refusal: several servers on one machine
  work with it, and elsewhere the mistake is loud, not silent (a server that gets a
  forwarded request for a log it does not keep answers a 503 naming both servers
  and the URL to check; ``api/logproxy.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import logging
import os
import re
import resource
import secrets
import socket
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import uvicorn

from corral import serverlog
from corral.config import Settings, is_loopback
from corral.keys import KEY_FILE_NAME, default_admin, key_digest, new_key

if TYPE_CHECKING:
    from corral.cluster import Cluster
    from corral.executors.base import Executor
    from corral.store import Store

log = logging.getLogger(__name__)

ORIGIN_RE = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class ServeError(Exception):
    """A setting that keeps the server from starting; the message says which."""


def check_exposure(settings: Settings) -> list[str]:
    """Refuse settings that would expose the server by accident (``ServeError``);
    return warnings to print on every start for those it allows."""
    warnings = []
    loopback = is_loopback(settings.host)
    if settings.no_auth:
        if not loopback or settings.allowed_hosts or settings.allowed_origins:
            raise ServeError(
                "--no-auth is for loopback only (no --allowed-host, no --allowed-origin):"
                f" refusing to serve without keys on {settings.host}, under other host"
                " names or to other origins, where anyone who reaches it, or a web page,"
                " could run commands as this user"
            )
        warnings.append(
            "--no-auth: no API key is checked. Every local user, and any web page"
            " this machine's browsers open that gets past the host and origin checks, can"
            f" run commands as {default_admin()} with admin rights. Do not use it on a shared"
            " machine."
        )
    from corral.api.guard import host_name

    for name in settings.allowed_hosts:
        if name != "*" and host_name(name) is None:
            raise ServeError(
                f"--allowed-host {name!r} is not a host name or address: give what"
                " clients put in the URL, without a port (corral.example.org, 10.0.0.5,"
                " ::1)"
            )
    for origin in settings.allowed_origins:
        if not ORIGIN_RE.fullmatch(origin.rstrip("/")):
            raise ServeError(
                f"--allowed-origin {origin!r} is not an origin: give scheme://host[:port],"
                " e.g. https://dash.example.org (not null, not *)"
            )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ServeError("--tls-cert and --tls-key go together: give both, or neither")
    if not loopback:
        if not settings.allowed_hosts:
            raise ServeError(
                f"listening on {settings.host} needs --allowed-host NAME (repeatable): the"
                " host names clients use to reach this server; requests naming any other"
                " host are refused (DNS rebinding)"
            )
        if settings.tls_cert is None:
            warnings.append(
                f"serving plain HTTP on {settings.host}: API keys cross the network"
                " in clear. Use --tls-cert/--tls-key, or a TLS reverse proxy (README:"
                " Exposing corral)."
            )
    return warnings


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
"""``--host`` values that listen on every address: no host to advertise."""


def loopback_name(host: str) -> bool:
    """True for a host that names this machine only: a loopback address, ``localhost``
    and its kin (``localhost.localdomain``, ``*.localhost``, ``ip6-localhost``)."""
    host = host.lower().strip("[]").rstrip(".")
    return (
        is_loopback(host)
        or host in ("localhost.localdomain", "ip6-localhost", "ip6-loopback")
        or host.endswith(".localhost")
    )


def advertised_url(settings: Settings, fqdn: Callable[[], str] | None = None) -> str:
    """Where the other servers of the database reach this one (module docstring);
    ``fqdn`` gives this machine's fully qualified name (default ``socket.getfqdn``,
    asked only for a wildcard ``--host``: it may wait for DNS)."""
    if settings.advertise_url:
        return settings.advertise_url
    scheme = "https" if settings.tls_cert else "http"
    host = settings.host
    if host in WILDCARD_HOSTS:
        from corral.api.guard import host_name

        machine = (fqdn or _fqdn)()
        allowed = [h for h in settings.allowed_hosts if h != "*"]
        any_host = "*" in settings.allowed_hosts
        names = [machine] if any_host or host_name(machine) in map(host_name, allowed) else []
        names += [host_name(h) or h for h in allowed]
        host = next((n for n in names if not loopback_name(n)), machine)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{settings.port}"


def check_advertised(settings: Settings, url: str) -> list[str]:
    """Refuse an advertised ``url`` that this server's host guard would refuse
    (``ServeError``); return the warning for a loopback one while ``--host`` is not
    (module docstring)."""
    from urllib.parse import urlsplit

    from corral.api.guard import LOOPBACK_HOSTS, host_name

    host = urlsplit(url).hostname or ""
    given = "--advertise-url" if settings.advertise_url else "the advertised URL (the default)"
    if loopback_name(host):
        if is_loopback(settings.host):
            return []
        return [
            f"{given} {url} is a loopback address: the other servers of the database would"
            f" ask themselves for this server's logs; give --advertise-url with a name they"
            f" reach this machine by, e.g. --advertise-url {urlsplit(url).scheme}://NAME:"
            f"{settings.port}"
        ]
    accepted = LOOPBACK_HOSTS | {host_name(h) or h for h in settings.allowed_hosts}
    if "*" not in accepted and host_name(host) not in accepted:
        raise ServeError(
            f"{given} {url} names the host {host}, which this server refuses (it is not"
            f" among its --allowed-host names): add --allowed-host {host}, or advertise a"
            " name it serves"
        )
    return []


def serve(settings: Settings) -> None:
    from corral.api import create_app
    from corral.api.guard import LOOPBACK_HOSTS, AccessPolicy, host_name
    from corral.scheduler import Scheduler
    from corral.store import open_store
    from corral.store.base import Principal

    serverlog.configure(settings.log_format)
    warnings = check_exposure(settings)
    shared = not settings.db_url.startswith("sqlite:")
    advertised = advertised_url(settings)
    if shared:
        warnings += check_advertised(settings, advertised)
    # Files this server creates are its user's alone (database, keys, logs, state);
    # workloads get the umask it was started with back (through their shim).
    workload_umask = os.umask(0o077)
    # Take the port first: a second server on the same port must fail before it
    # touches the data dir (and its running workloads).
    sock = _listen(settings.host, settings.port)
    _private_dir(settings.data_dir)
    lock = _lock_data_dir(settings.data_dir)
    workload_open_files = _raise_open_files_limit()
    executor = _executor(settings, workload_open_files, workload_umask, shared=shared)
    from corral.cluster import PG_POLL_SECONDS, Cluster, default_name, new_instance
    from corral.events import Broadcast, BroadcastingStore
    from corral.store.errors import DatabaseError, StoreBusyError

    instance = new_instance()
    try:
        # Each write this server makes wakes its event streams (corral.events).
        broadcast = Broadcast()
        store = BroadcastingStore(
            open_store(settings.db_url, server=True, instance=instance), broadcast
        )
    except (ValueError, OSError, sqlite3.Error, StoreBusyError, DatabaseError) as exc:
        raise ServeError(f"cannot open the database {redacted(settings.db_url)}: {exc}") from None
    _private_files(settings.db_url)
    key_file = settings.data_dir / KEY_FILE_NAME  # made sure of by _run, first thing
    name = settings.name or default_name()
    scheduler = Scheduler(
        store, executor, node=name, poll_seconds=PG_POLL_SECONDS if shared else None
    )
    policy = AccessPolicy(
        auth=not settings.no_auth,
        anonymous=Principal(None, default_admin(), True),
        allowed_hosts=LOOPBACK_HOSTS | {host_name(h) or h for h in settings.allowed_hosts},
        allowed_origins=frozenset(o.rstrip("/").lower() for o in settings.allowed_origins),
        rate_limit=settings.rate_limit,
    )
    scheme = "https" if settings.tls_cert else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"{scheme}://{host}:{settings.port}"
    cluster = Cluster(
        store,
        scheduler,
        name=name,
        url=advertised,
        lease_seconds=settings.lease_seconds,
        schedule=settings.scheduler == "auto",
        instance=instance,
    )
    from corral.retention import Retention, scheduling_server

    retention = Retention(
        store,
        scheduler,
        settings.data_dir / "logs",
        retain_seconds=settings.retain_finished_seconds,
        min_interval=settings.retention_min_interval_seconds,
        deletes_rows=scheduling_server(cluster, store),
    )
    log_proxy = None
    if shared:  # a log may be kept by another server of the database
        from corral.api.logproxy import LogProxy

        log_proxy = LogProxy(
            store,
            this_server=name,
            executor_kind="ray" if settings.executor == "ray" else "local",
        )
    app = create_app(
        store,
        data_dir=settings.data_dir,
        scheduler=scheduler,
        max_body_bytes=settings.max_body_bytes,
        policy=policy,
        cluster=cluster,
        log_proxy=log_proxy,
        metrics_refresh_seconds=settings.metrics_refresh_seconds,
        retention=retention,
    )
    where = f"executor {settings.executor}"
    if executor is not None and not executor.placement:
        cap = executor.capacity
        where += f": {cap.cpus:g} CPUs, {cap.memory_mb} MB, {cap.gpus} GPUs"
    elif executor is not None:  # its nodes are known once the scheduler has started
        where += f" at {getattr(executor, 'address', '?')}"
    where += f"; server {name}" + (f" at {advertised}" if shared else "")
    where += "" if settings.scheduler == "auto" else ", API only"
    if settings.retain_finished_seconds is not None:
        from corral.units import format_duration

        where += f"; finished workloads kept {format_duration(settings.retain_finished_seconds)}"
    banner = f"corral serving {url} ({where}; data in {settings.data_dir}; admin key in {key_file})"

    def announce() -> None:
        for warning in warnings:
            log.warning("%s", warning)
        serverlog.announce(settings.log_format, banner, url=url, data_dir=str(settings.data_dir))

    # serverlog owns logging: no uvicorn log config, no access log (api/access.py logs
    # the requests that change something), uvicorn's loggers at WARNING.
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # the client address is the peer's: X-Forwarded-For is not trusted
        log_config=None,
        log_level=None,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        timeout_graceful_shutdown=STOP_TIMEOUT_SECONDS,
    )
    gc.disable()  # until started: see settle_heap
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(
                _run(
                    _Server(config, announce, broadcast.close),
                    store,
                    settings.data_dir,
                    sock,
                    cluster,
                )
            )
    finally:
        gc.enable()  # (a start that failed never settled the heap)
        sock.close()
        lock.close()


async def _run(
    server: uvicorn.Server, store: Store, data_dir: Path, sock: socket.socket, cluster: Cluster
) -> None:
    """On the loop the server will serve on (the store's connections belong to it):
    make sure of the admin key, serve until told to stop, close the store."""
    from corral.cluster import ClusterError
    from corral.store.errors import DatabaseError, StoreBusyError

    try:
        try:
            # Joining first (the first round trip to the database): a server refused
            # (its name taken, a second scheduler on SQLite) leaves no admin key behind.
            await cluster.join()
            await ensure_admin_key(store, data_dir)
        except (StoreBusyError, DatabaseError) as exc:
            raise ServeError(f"cannot open the database {redacted(store.url)}: {exc}") from None
        except ClusterError as exc:
            raise ServeError(str(exc)) from None
        await server.serve(sockets=[sock])
    finally:
        await store.close()


def redacted(url: str) -> str:
    """``url`` without its password (``postgresql://user:***@host/db``)."""
    return re.sub(r"^([a-z+]+://[^/:@]*):[^/@]*@", r"\1:***@", url)


def _make_private(path: str | Path, mode: int) -> None:
    """``path`` (made by an older corral, or under another umask) gets ``mode`` when
    group or others have any access to it; a missing file is left alone."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, mode)


def _private_dir(data_dir: Path) -> None:
    """Create the data dir, or take an existing one, as 0700: it holds the admin key,
    the database and every workload's output."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_private(data_dir, 0o700)
    except OSError as exc:
        raise ServeError(f"cannot use data dir {data_dir}: {exc.strerror}") from None


def _private_files(db_url: str) -> None:
    """A database made by an older corral (or under another umask) becomes 0600."""
    if not db_url.startswith("sqlite:///"):
        return
    path = db_url.removeprefix("sqlite:///")
    for name in (path, f"{path}-wal", f"{path}-shm"):
        _make_private(name, 0o600)


async def ensure_admin_key(store: Store, data_dir: Path) -> Path:
    """``DATA_DIR/token`` holds an active admin key when this returns: the one there,
    or a new one for the OS user running the server (first start, or the file was
    deleted or its key revoked). Written 0600 to a new file, then renamed, so the
    file never exists with other modes or half written."""
    path = data_dir / KEY_FILE_NAME
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    except OSError as exc:
        raise ServeError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    if key:
        found = await store.find_api_key(key_digest(key))
        if found is not None and found.admin:
            with contextlib.suppress(OSError):
                _make_private(path, 0o600)
            return path
    key = new_key()
    await store.create_api_key(
        user=default_admin(),
        admin=True,
        key_sha256=key_digest(key),
        description=f"written to {path} by corral serve",
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ServeError(f"cannot write the admin key file {path}: {exc.strerror}") from None
    return path


def _lock_data_dir(data_dir: Path) -> TextIO:
    """Hold ``DATA_DIR/server.lock`` for the life of the process: two servers on one
    data dir would each take the other's running workloads for lost and kill them.
    (The kernel drops the lock when the process dies, however it dies; the file is
    close-on-exec, so workloads never hold it.)"""
    path = data_dir / "server.lock"
    try:
        lock = open(path, "a+")  # noqa: SIM115 - held until the server exits
    except OSError as exc:
        raise ServeError(f"cannot use data dir {data_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise ServeError(
            f"another corral serve (pid {holder}) is using {data_dir};"
            " stop it, or give this one another --data-dir"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _raise_open_files_limit() -> int | None:
    """Each running workload holds a descriptor (its pidfd); the usual soft limit of
    1,024 would make the 1,000th workload fail to start. Raise it to the hard limit,
    as service managers do, and return the soft limit it had (the one workloads get:
    a huge limit slows programs that close every possible descriptor, and breaks
    select()), or None when it was not changed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return soft


NOT_SENT_MAX_BYTES = 128 * 1024
"""``TCP_NOTSENT_LOWAT`` of every connection (``_listen``; inherited on accept)."""


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a ``ServeError`` that says why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # At most 128 KiB not sent yet in the kernel per connection (its buffer grows
        # to 4 MB else): what a client that does not read costs the server (an event
        # stream catching up) stays small; sending speed is not limited.
        if hasattr(socket, "TCP_NOTSENT_LOWAT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOT_SENT_MAX_BYTES)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = (
            " (is another corral serve running? choose another port with --port)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


STOP_GRACE_SECONDS = 3.0
"""How long a stopping server lets the answers in progress end by themselves before
it closes their connections (``_Server.shutdown``)."""
STOP_TIMEOUT_SECONDS = 10
"""uvicorn's ``timeout_graceful_shutdown``: past it, a request still running (one
waiting on something else than its client) is cancelled."""


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it answers requests (a banner printed
    earlier would claim a port the server may not get).

    **Stopping.** uvicorn waits for every answer in progress to end, with no limit
    of its own, and some never end by themselves: an event stream (ended by
    ``stopping``, the event broadcast's ``close``, unless its task is blocked writing
    to a client that does not read), a log ``follow=true`` of a workload that runs
    on. So ``STOP_GRACE_SECONDS`` after the stop began, the connections still open are
    closed (each answer then ends as if its client had left: a client resumes
    elsewhere, a watcher with ``Last-Event-ID``), and ``STOP_TIMEOUT_SECONDS`` is
    uvicorn's own bound for the rest: the port and the data dir's lock are freed
    within seconds."""

    def __init__(
        self, config: uvicorn.Config, announce: Callable[[], None], stopping: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self.announce = announce
        self.stopping = stopping

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping()  # end the event streams first: uvicorn waits for every response
        loop = asyncio.get_running_loop()
        closing = loop.call_later(STOP_GRACE_SECONDS, self._close_connections)
        try:
            await super().shutdown(sockets)
        finally:
            closing.cancel()

    def _close_connections(self) -> None:
        """Close every connection still open, at once (what its client has not read
        yet is dropped): each answer's next write sees its client gone."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            settle_heap()
            self.announce()


def settle_heap() -> None:
    """Once the server has started: what lives now (modules, the app, the queue read
    from the store) lives as long as the server, so it is taken out of the garbage
    collector's sight (``gc.freeze``, after a collection, so that no garbage is kept
    for good). A full collection then walks only what came after: with 100,000
    workloads queued at start, each took 290-360 ms of the event loop
    (docs/benchmarks.md, "Issue 13: the third round"). Frozen objects are still freed
    when their last reference goes; only a cycle among them would stay.

    The collector is off until then (``serve``): starting with 100,000 queued, it
    ran a dozen full collections of up to 350 ms while the queue was read, 2 s in
    all, to find nothing to free."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _executor(
    settings: Settings, workload_open_files: int | None, workload_umask: int, *, shared: bool
) -> Executor | None:
    """The executor of ``settings``. ``shared`` (a database other servers share): the
    local executor's workloads end with this server (each shim watches it), since a
    standby that takes over fails them as lost and cannot stop them itself."""
    if settings.executor == "none":
        return None
    from corral.executors.local import LocalExecutor, detect_capacity
    from corral.executors.shim import ShimBuildError

    if settings.executor == "ray":
        try:
            return _ray_executor(settings, workload_open_files, workload_umask)
        except ShimBuildError as exc:
            raise ServeError(str(exc)) from None
    capacity = detect_capacity(settings.cpus, settings.memory_mb, settings.gpus)
    try:
        return LocalExecutor(
            settings.data_dir,
            capacity=capacity,
            kill_grace_seconds=settings.kill_grace_seconds,
            workload_open_files=workload_open_files,
            workload_umask=workload_umask,
            watch_pid=os.getpid() if shared else None,
            max_log_bytes=settings.max_log_bytes,
        )
    except ShimBuildError as exc:
        raise ServeError(str(exc)) from None


def _fqdn() -> str:
    return socket.getfqdn() or socket.gethostname()


def _ray_executor(
    settings: Settings, workload_open_files: int | None, workload_umask: int
) -> Executor:
    """The Ray executor, on the cluster at ``--ray-address``, or on a head this
    server starts (or found running from an earlier start) on this machine: loopback
    only, token auth (``executors/ray_head.py``). Ray reads its settings from the
    environment when it is imported, so they are set first; a cluster that cannot be
    reached is one error now, not a minute of Ray's retries."""
    from corral.errors import CorralError
    from corral.executors import ray_head

    try:
        ray_head.require_ray()
        os.environ.setdefault(GCS_RECONNECT, str(365 * 24 * 3600))
        if settings.ray_address is None:
            head = ray_head.ensure_head(
                settings.data_dir,
                cpus=settings.cpus,
                memory_mb=settings.memory_mb,
                gpus=settings.gpus,
            )
            os.environ.update(head.env)
            address = head.address
            what = "started" if head.started else "found running"
            log.info("Ray head %s at %s (pid %d)", what, address, head.pid)
        else:
            address = settings.ray_address
            _check_reachable(address)
            _joining_env(address)
        namespace = "corral-" + _ray_namespace(settings.data_dir, settings.db_url)
        node_dir = (settings.ray_node_dir or Path(tempfile.gettempdir())) / namespace
        from corral.executors.ray import RayExecutor

        executor = RayExecutor(
            settings.data_dir,
            address=address,
            namespace=namespace,
            kill_grace_seconds=settings.kill_grace_seconds,
            node_dir=node_dir,
            workload_umask=workload_umask,
            workload_open_files=workload_open_files,
            max_log_bytes=settings.max_log_bytes,
        )
        log.info("joining the Ray cluster at %s", address)
        executor.connect(settings.ray_connect_timeout_seconds)
    except CorralError as exc:
        raise ServeError(str(exc)) from None
    return executor


GCS_RECONNECT = "RAY_gcs_rpc_server_reconnect_timeout_s"
"""Ray ends a driver whose GCS has been unreachable this long (60 s by default): the
server, API and all. corral's server outlives its cluster's outages instead."""


def _joining_env(address: str) -> None:
    """What Ray needs in the environment, before it is imported, to join ``address``
    as the README says: token auth on when a token is given (Ray wants
    ``RAY_AUTH_MODE=token`` besides the token), and a loopback cluster reached on
    loopback (Ray swaps 127.0.0.1 for the machine's outward address unless told)."""
    env = os.environ
    if (env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH")) and not env.get(
        "RAY_AUTH_MODE"
    ):
        env["RAY_AUTH_MODE"] = "token"
    host = address.rpartition(":")[0].strip("[]")
    if address != "auto" and is_loopback(host):
        env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _ray_namespace(data_dir: Path, db_url: str) -> str:
    """This installation's id on a Ray cluster (its agents' and placement groups'
    namespace), made at the first start and kept in ``DATA_DIR/ray/namespace``: two
    corral installations on one cluster never see each other's. On a shared database
    it is the database's (``meta``; the first server's stays): every server of it
    joins the same namespace, so the one that takes over scheduling finds the
    agents and workloads of the one before."""
    if not db_url.startswith("sqlite:"):
        return asyncio.run(_shared_namespace(db_url, _ray_namespace(data_dir, "sqlite:")))
    path = data_dir / "ray" / "namespace"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, exist_ok=True)
    name = secrets.token_hex(8)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(name + "\n")
    tmp.rename(path)
    return name


async def _shared_namespace(db_url: str, default: str) -> str:
    from corral.store import open_store

    store = open_store(db_url)
    try:
        return await store.meta_value("ray_namespace", default)
    finally:
        await store.close()


def _check_reachable(address: str) -> None:
    """``HOST:PORT`` must accept a connection (Ray itself retries for minutes)."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise ServeError(
            f"--ray-address {address}: corral joins a cluster as a driver, through its GCS"
            " (HOST:PORT, port 6379 unless the head was started with another), not as a"
            " Ray Client (ray://)"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ServeError(f"invalid --ray-address {address!r}: give auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as exc:
        raise ServeError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}"
            " (is its head running? `ray start --head` there, or leave --ray-address out"
            " to let corral start one here)"
        ) from None
