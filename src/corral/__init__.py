"""corral: a workload manager.

``from corral import Client`` gives the Python client, its errors and the types of its
answers (``Workload``, ``Status``, ``Page``, …, from ``corral.wire``); they are imported
on first use, so ``import corral`` stays cheap for the server. ``corral.client``,
``corral.wire`` and ``corral.defaults`` use the standard library only.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs milliseconds

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Capacity",
    "Client",
    "CorralClientError",
    "Event",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "KillResult",
    "NewToken",
    "NotFound",
    "NotKilled",
    "Page",
    "QueueEntry",
    "RateLimited",
    "Resources",
    "ServerError",
    "ServerStatus",
    "ServerUnreachable",
    "Status",
    "Token",
    "Unauthorized",
    "WaitTimeout",
    "Workload",
    "__version__",
]

_CLIENT_NAMES = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from typing import Any

    from corral.client import (
        APIError,
        Capacity,
        Client,
        CorralClientError,
        Event,
        Forbidden,
        InvalidInput,
        InvalidTransition,
        KillResult,
        NewToken,
        NotFound,
        NotKilled,
        Page,
        QueueEntry,
        RateLimited,
        Resources,
        ServerError,
        ServerStatus,
        ServerUnreachable,
        Status,
        Token,
        Unauthorized,
        WaitTimeout,
        Workload,
    )


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from corral import client

        return getattr(client, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT_NAMES})
