"""Defaults the client and the server share (standard library only): where a server
listens unless told otherwise, where its data dir is, and what counts as this
machine's own address. ``config.py`` (the server's settings) imports them from here.
``pathlib`` and ``ipaddress`` are imported when needed: a CLI call usually needs neither."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs milliseconds
if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.1``, ``::1``,
    ``[::1]``): the server's own machine."""
    if host in _LOOPBACK:
        return True
    import ipaddress  # here: a client aimed at the default URL never needs it

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/corral``, else ``~/.local/share/corral``."""
    from pathlib import Path

    return Path(default_data_dir_name())


def default_data_dir_name() -> str:
    """``default_data_dir()`` as a string (without importing ``pathlib``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "corral")
