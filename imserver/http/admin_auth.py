"""Who is calling the admin API, and which part of the tree they may touch.

Two kinds of administrator: the operator's super key (``auth.admin_api_key``,
for the HR sync and the first grants), and people — users with a user token
who were granted one or more unit subtrees. Every scoped call names the unit
it touches and is checked with :meth:`AdminContext.require`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from imserver.directory.model import Unit
from imserver.errors import Forbidden, NotAuthenticated
from imserver.http.api import ADMIN_KEY, IDENTITY, SIGNER, is_admin_key, take_user_budget
from imserver.store.base import AdminDirectoryStore
from imserver.tokens import TokenSigner

DIRECTORY_STORE: web.AppKey[AdminDirectoryStore] = web.AppKey("directory_store")


@dataclass(slots=True, frozen=True)
class AdminContext:
    super: bool
    user: str | None
    scopes: tuple[Unit, ...]

    def covers(self, unit: Unit) -> bool:
        return self.super or any(unit.path.startswith(s.path) for s in self.scopes)

    def require(self, unit: Unit) -> None:
        if not self.covers(unit):
            raise Forbidden(f"unit {unit.id!r} is outside your admin scope")

    def require_super(self) -> None:
        if not self.super:
            raise Forbidden("this call needs the operator's admin key")


async def admin_context(request: web.Request, admin_key: str, signer: TokenSigner) -> AdminContext:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise NotAuthenticated("send 'Authorization: Bearer <admin key or user token>'")
    given = header[len("Bearer ") :].strip()
    if is_admin_key(given, admin_key):
        return AdminContext(True, None, ())
    claims = signer.verify(given)  # TokenInvalid / TokenExpired for anything else
    await request.app[IDENTITY].check(claims)
    take_user_budget(request, claims.user)  # a scoped admin spends their user budget
    scopes = await request.app[DIRECTORY_STORE].admin_scopes(claims.user)
    if not scopes:
        raise Forbidden("you are not an administrator")
    return AdminContext(False, claims.user, tuple(scopes))


async def admin_of(request: web.Request) -> AdminContext:
    """The caller's admin context, with the server's key and signer."""
    return await admin_context(request, request.app[ADMIN_KEY], request.app[SIGNER])
