"""``/v1/tokens``: API keys, managed by admin keys (``corral token …``).

A key has a ``role``: ``user``, ``admin`` or ``metrics`` (``GET /metrics`` only, which
the guard enforces: ``guard.py``); ``admin`` in the body and the answers is kept,
derived from it.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import BaseModel
from starlette.responses import Response

from corral.api.guard import principal
from corral.api.problems import READ_FAULTS, WRITE_FAULTS, responses
from corral.api.routes import json_body, json_response, parse_body
from corral.errors import ForbiddenError, InvalidInputError
from corral.keys import key_digest, new_key
from corral.model import NO_NUL, NUL_FREE, KeyRole, NewToken, Token, TokenCreate
from corral.store import Store

RESERVED_USERS = frozenset({"scheduler"})
"""Actors corral records itself: no user may pass for one."""

TokenId = Annotated[
    str,
    PathParam(
        description="The key's id (from corral token list).", json_schema_extra={"pattern": NO_NUL}
    ),
    NUL_FREE,
]


class TokenList(BaseModel):
    items: list[Token]


def check_unix_user(unix_user: str, *, admin: bool = False) -> None:
    """``InvalidInputError`` unless this server can run workloads as ``unix_user`` (and
    only an admin key may run them as root)."""
    if os.geteuid() != 0:
        raise InvalidInputError(
            f"this server does not run as root, so it cannot run workloads as Unix user"
            f" {unix_user!r}; run corral serve as root to map users to Unix accounts"
        )
    try:
        entry = pwd.getpwnam(unix_user)
    except KeyError:
        raise InvalidInputError(f"no Unix user {unix_user!r} on the server's machine") from None
    if entry.pw_uid == 0 and not admin:
        raise InvalidInputError(
            f"{unix_user!r} is root (uid 0): only an admin key may run workloads as root"
        )


def _admin(request: Request) -> None:
    if not principal(request).admin:
        raise ForbiddenError("only admin keys may manage API keys")


def build_token_router(store: Store, forget_keys: Callable[[], None]) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/tokens",
        status_code=201,
        response_model=NewToken,
        responses=responses(403, 409, 413, 422, *WRITE_FAULTS),
        summary="Create an API key (admin keys only); the key is in this answer only",
        operation_id="create_token",
        tags=["tokens"],
        openapi_extra=json_body(TokenCreate),
    )
    async def create_token(request: Request) -> Response:
        _admin(request)
        body = await parse_body(request, TokenCreate)
        if body.user in RESERVED_USERS:
            raise InvalidInputError(
                f"{body.user!r} is a name corral uses for itself in events; choose another"
            )
        role = body.key_role
        if body.unix_user is not None:
            check_unix_user(body.unix_user, admin=role is KeyRole.ADMIN)
        key = new_key()
        token = await store.create_api_key(
            user=body.user,
            role=role,
            key_sha256=key_digest(key),
            unix_user=body.unix_user,
            description=body.description,
        )
        created = NewToken(**token.model_dump(), key=key)
        return json_response(created, 201, {"Location": f"/v1/tokens/{token.id}"})

    @router.get(
        "/v1/tokens",
        response_model=TokenList,
        responses=responses(403, *READ_FAULTS),
        summary="List API keys, newest first (admin keys only; never the keys)",
        operation_id="list_tokens",
        tags=["tokens"],
    )
    async def list_tokens(request: Request) -> Response:
        _admin(request)
        return json_response(TokenList.model_construct(items=await store.list_api_keys()))

    @router.delete(
        "/v1/tokens/{token_id}",
        response_model=Token,
        responses=responses(403, 404, *WRITE_FAULTS),
        summary="Revoke an API key (admin keys only)",
        operation_id="revoke_token",
        tags=["tokens"],
    )
    async def revoke_token(token_id: TokenId, request: Request) -> Response:
        _admin(request)
        token = await store.revoke_api_key(token_id)
        forget_keys()
        return json_response(token)

    return router
