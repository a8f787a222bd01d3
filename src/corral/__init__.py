"""corral: a workload manager.

``from corral import Client`` gives the Python client; it and its errors are imported
on first use, so ``import corral`` stays cheap for the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Client",
    "CorralClientError",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "NotFound",
    "RateLimited",
    "ServerError",
    "ServerUnreachable",
    "Unauthorized",
    "WaitTimeout",
    "__version__",
]

_CLIENT_NAMES = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from corral.client import (
        APIError,
        Client,
        CorralClientError,
        Forbidden,
        InvalidInput,
        InvalidTransition,
        NotFound,
        RateLimited,
        ServerError,
        ServerUnreachable,
        Unauthorized,
        WaitTimeout,
    )


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from corral import client

        return getattr(client, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT_NAMES})
