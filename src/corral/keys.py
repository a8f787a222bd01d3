"""API keys: how they are made, stored and compared (spec §6).

A key is ``corral_`` followed by 32 random bytes in base64url (256 bits; the prefix
lets secret scanners and people recognize one). Only its SHA-256 is stored: a key is
random, so a fast hash is as good as a slow one, and a lookup by hash never compares
the secret itself. The match is confirmed with ``hmac.compare_digest``.

The client imports this module for ``KEY_FILE_NAME`` and ``KEY_RE`` only, so the
modules that make, hash and compare keys are imported by the functions that do.
"""

from __future__ import annotations

import re

KEY_PREFIX = "corral_"
KEY_BYTES = 32
KEY_FILE_NAME = "token"
"""The admin key ``corral serve`` writes in its data dir (0600)."""
KEY_RE = re.compile(r"[\x21-\x7e]+")
"""What a client accepts as a key: one word of printable ASCII (anything else cannot
go in an HTTP header)."""


def new_key() -> str:
    import secrets

    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_digest(key: str) -> str:
    """The stored form of a key: its SHA-256, in hex."""
    import hashlib

    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def same_digest(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def default_admin() -> str:
    """The name of the first admin: the OS user running the server."""
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (some containers)
        return "admin"
    name = re.sub(r"[^a-z0-9_.@-]", "_", name.lower())[:64]
    return name if re.match(r"^[a-z_]", name) else f"_{name}"[:64]
