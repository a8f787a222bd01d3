"""Users and API keys in SQLite: the part of ``SQLiteStore`` that says who is asking."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from corral.ids import new_id, now_rfc3339
from corral.keys import same_digest
from corral.model import KeyRole, Token, role_of
from corral.store.base import Account, Principal
from corral.store.errors import TokenNotFoundError, UnixUserConflictError

_TOKEN_COLUMNS = "k.id, k.user, k.role, u.unix_user, k.description, k.created_at, k.revoked_at"
_TOKENS = f"SELECT {_TOKEN_COLUMNS} FROM api_keys AS k JOIN users AS u ON u.name = k.user"


def _token(row: Sequence[Any]) -> Token:
    return Token(
        id=row[0],
        user=row[1],
        admin=row[2] == KeyRole.ADMIN,
        role=row[2],
        unix_user=row[3],
        description=row[4],
        created_at=row[5],
        revoked_at=row[6],
    )


class SQLiteKeys:
    """Mixed into ``SQLiteStore``: the users and api_keys tables."""

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def create_api_key(
        self,
        *,
        user: str,
        key_sha256: str,
        admin: bool = False,
        role: KeyRole | None = None,
        unix_user: str | None = None,
        description: str | None = None,
    ) -> Token:
        key_role = role_of(admin, role).value
        key_id = new_id()
        with self._write() as conn:
            now = now_rfc3339()
            row = conn.execute("SELECT unix_user FROM users WHERE name = ?", (user,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO users (name, unix_user, created_at) VALUES (?, ?, ?)",
                    (user, unix_user, now),
                )
            elif unix_user is not None and row[0] is None:  # a first mapping, given now
                conn.execute("UPDATE users SET unix_user = ? WHERE name = ?", (unix_user, user))
            elif unix_user is not None and row[0] != unix_user:
                raise UnixUserConflictError(user, row[0], unix_user)
            conn.execute(
                "INSERT INTO api_keys (id, user, role, key_sha256, description, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, user, key_role, key_sha256, description, now),
            )
            found = conn.execute(f"{_TOKENS} WHERE k.id = ?", (key_id,)).fetchone()
        return _token(found)

    def find_api_key(self, key_sha256: str) -> Principal | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT id, user, role, key_sha256 FROM api_keys"
                " WHERE key_sha256 = ? AND revoked_at IS NULL",
                (key_sha256,),
            ).fetchone()
        if row is None or not same_digest(row[3], key_sha256):
            return None
        return Principal.of(row[0], row[1], row[2])

    def list_api_keys(self) -> list[Token]:
        with self._connection() as conn:
            rows = conn.execute(f"{_TOKENS} ORDER BY k.id DESC").fetchall()
        return [_token(r) for r in rows]

    def revoke_api_key(self, key_id: str) -> Token:
        with self._write() as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now_rfc3339(), key_id),
            )
            row = conn.execute(f"{_TOKENS} WHERE k.id = ?", (key_id,)).fetchone()
        if row is None:
            raise TokenNotFoundError(key_id)
        return _token(row)

    def account_of(self, user: str) -> Account:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT unix_user, EXISTS (SELECT 1 FROM api_keys WHERE user = ?"
                " AND role = 'admin' AND revoked_at IS NULL) FROM users WHERE name = ?",
                (user, user),
            ).fetchone()
        return Account(None, False) if row is None else Account(row[0], bool(row[1]))
