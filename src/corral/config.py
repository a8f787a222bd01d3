"""Settings: every default in one place, overridable by ``CORRAL_*`` variables and
by command-line flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from corral.defaults import DEFAULT_HOST as DEFAULT_HOST
from corral.defaults import DEFAULT_PORT as DEFAULT_PORT
from corral.defaults import DEFAULT_URL as DEFAULT_URL
from corral.defaults import default_data_dir as default_data_dir
from corral.defaults import is_loopback as is_loopback
from corral.retention import MIN_INTERVAL_SECONDS
from corral.store.base import OLDER_THAN_MAX_SECONDS

KILL_GRACE_SECONDS = 10.0
SERVER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
ADVERTISE_URL_RE = re.compile(
    r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::([0-9]{1,5}))?/?"
)
"""``--advertise-url``: a scheme, a host (a name or an address) and a port, no path,
query, user or fragment (a trailing ``/`` is dropped)."""


def _url_usable(url: str) -> bool:
    """``url`` (matched by ``ADVERTISE_URL_RE``) is one the other servers' HTTP client
    takes: the pattern lets through any colons and dots in brackets, and addresses
    such as ``1.2.3.999``, on which a forward would fail."""
    import httpx

    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    return True


RATE_LIMIT_PER_SECOND = 200.0
"""Requests per second per API key (bursts of twice that); clients wait and retry."""


class Settings(BaseSettings):
    """Server settings (``corral serve``)."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_")

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    data_dir: Path = default_data_dir()
    db: str | None = None
    """Database URL; default ``sqlite:///<data_dir>/corral.db``."""
    executor: Literal["local", "ray", "none"] = "local"
    ray_address: str | None = None
    """The Ray cluster to join (``auto`` or ``HOST:PORT``); None: corral starts a Ray
    head on this machine (loopback only, token auth) and keeps it between restarts."""
    ray_connect_timeout_seconds: float = Field(60.0, gt=0)
    """How long joining the Ray cluster may take before ``corral serve`` gives up."""
    ray_node_dir: Path | None = None
    """Where each Ray node keeps its workloads' logs and state, below
    ``<ray_node_dir>/<namespace>/<node id>``; default the temporary directory."""
    cpus: float | None = Field(None, ge=0)
    """Schedulable CPUs; default: this machine's."""
    memory_mb: int | None = Field(None, ge=0)
    """Schedulable memory; default: this machine's."""
    gpus: int | None = Field(None, ge=0)
    """Schedulable GPUs; default: counted by ``nvidia-smi``, else 0."""
    kill_grace_seconds: float = Field(KILL_GRACE_SECONDS, ge=0)
    max_log_bytes: int = Field(0, ge=0)
    """Each workload's log is kept to its first and last half of this many bytes, with
    a line saying how many were dropped between (``corral.logs``); 0: no cap. Sizes
    as ``10M``, ``1G`` or bytes (``corral.units.parse_bytes``)."""

    @field_validator("max_log_bytes", mode="before")
    @classmethod
    def _bytes(cls, value: object) -> object:
        """``--max-log-bytes 10M`` and ``CORRAL_MAX_LOG_BYTES=10M`` as well as bytes."""
        if isinstance(value, str):
            from corral.units import parse_bytes

            return parse_bytes(value)
        return value

    max_body_bytes: int = Field(1 << 20, ge=1)
    no_auth: bool = False
    """Serve every request as an admin without a key (loopback only)."""
    allowed_hosts: Annotated[list[str], NoDecode] = []
    """Host names (or addresses) clients may use besides the loopback ones; ``*``: any."""
    allowed_origins: Annotated[list[str], NoDecode] = []
    """Browser origins (``https://host[:port]``) that may change state cross-origin."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    rate_limit: float = Field(RATE_LIMIT_PER_SECOND, ge=0)

    @field_validator("name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is not None and not SERVER_NAME_RE.fullmatch(value):
            raise ValueError(
                "a server name is 1 to 63 letters, digits, '.', '_', ':' or '-',"
                " starting with a letter or digit"
            )
        return value

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``CORRAL_ALLOWED_HOSTS=a.example,b.example`` as well as a list."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    name: str | None = None
    """This server's name among the servers of one database (the ``node`` of its
    local workloads); default the short host name."""
    scheduler: Literal["auto", "never"] = "auto"
    """``auto``: schedule when this server holds the scheduler lease (on PostgreSQL,
    stand by until then); ``never``: serve the API only."""
    lease_seconds: float = Field(15.0, ge=3)
    """How long the scheduler lease lasts without a renewal (renewed every third)."""
    advertise_url: str | None = None
    """Where other servers of the database reach this one's API (log requests are
    forwarded there): ``http(s)://HOST[:PORT]``, nothing else. Default (the server
    derives it, ``server.advertised_url``): ``http(s)://HOST:PORT`` of its listener;
    with ``--host 0.0.0.0`` (or ``::``), the machine's FQDN, else its first
    ``--allowed-host`` name, in place of HOST."""

    @field_validator("advertise_url")
    @classmethod
    def _advertise_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = ADVERTISE_URL_RE.fullmatch(value)
        if match is None or not 0 < int(match.group(3) or 80) < 65536 or not _url_usable(value):
            raise ValueError(
                f"{value!r} is not http(s)://HOST[:PORT] with nothing after it: give the"
                " URL the other servers reach this one at, e.g. http://a.example:8765"
            )
        return value.rstrip("/")

    metrics_refresh_seconds: float = Field(15.0, gt=0)
    """How often ``/metrics`` reads the counts by status (on the scheduling server, or
    a server alone; the others serve what it publishes)."""

    retain_finished_seconds: float | None = Field(None, gt=0, le=OLDER_THAN_MAX_SECONDS)
    """Delete finished workloads (with their events and logs) this long after they
    ended (``corral.retention``); None: keep them."""
    retention_min_interval_seconds: float = Field(MIN_INTERVAL_SECONDS, gt=0)
    """The shortest time between two runs of retention (no flag: for tests, which
    retain for seconds; docs/operations.md)."""

    log_format: Literal["text", "json"] = "text"
    """The server log on stderr: one line per record, as text or as a JSON object."""

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'corral.db'}"
