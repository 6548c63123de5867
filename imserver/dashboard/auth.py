"""Who is looking at the dashboard: login, logout, and the viewer of every request.

Login trades the admin key, or a scoped admin's user token, for the signed
session cookie (``session.py``): ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it), path ``/dashboard/``.
State-changing requests also carry the session's CSRF token in a header and
must come from this origin. Each request re-checks what a cookie cannot
prove for itself: the admin key has not changed; the scoped admin's token
was not revoked since, and they still hold an admin grant (their subtrees
are read afresh, so a narrowed grant narrows the page at once); and the
session was not logged out on any node (``logouts.py``).
"""

from __future__ import annotations

import time

from aiohttp import web

from imserver.dashboard.logouts import LoggedOutSessions
from imserver.dashboard.session import COOKIE, KIND_KEY, KIND_USER, Session, SessionCodec
from imserver.errors import Forbidden, InvalidField, NotAuthenticated, TokenInvalid
from imserver.http.admin_auth import DIRECTORY_STORE, AdminContext
from imserver.http.api import ADMIN_KEY, IDENTITY, SIGNER, TRAIL, is_admin_key, read_json_object
from imserver.tokens import TokenClaims

CODEC: web.AppKey[SessionCodec] = web.AppKey("dashboard_codec", SessionCodec)
LOGOUTS = web.AppKey("dashboard_logouts", LoggedOutSessions)


def check_origin(request: web.Request) -> None:
    """A browser's cross-site POST names its origin; refuse any but this server's own."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Forbidden("cross-origin request refused")


def check_csrf(request: web.Request, session: Session) -> None:
    check_origin(request)
    if not request.app[CODEC].csrf_ok(session, request.headers.get("X-CSRF-Token", "")):
        raise Forbidden("missing or wrong X-CSRF-Token; reload the dashboard")


async def context_for(request: web.Request, s: Session) -> AdminContext:
    """The admin context ``s`` stands for now, or ``NotAuthenticated`` / ``Forbidden``."""
    app = request.app
    if s.kind == KIND_KEY:
        key = app[ADMIN_KEY]
        if not key or s.key_print != app[CODEC].key_print(key):
            raise NotAuthenticated("the admin key changed; log in again")
        return AdminContext(True, None, ())
    assert s.user is not None and s.device is not None
    await app[IDENTITY].check(TokenClaims(s.user, s.device, 0, 0, "", s.issued_at_ms))
    scopes = await app[DIRECTORY_STORE].admin_scopes(s.user)
    if not scopes:
        raise Forbidden("you are no longer an administrator")
    return AdminContext(False, s.user, tuple(scopes))


async def session_of(request: web.Request) -> Session | None:
    """The request's valid session cookie, if any, unless it was logged out on any node."""
    raw = request.cookies.get(COOKIE)
    s = None if raw is None else request.app[CODEC].decode(raw, time.time())
    if s is None or await request.app[LOGOUTS].is_logged_out(s.sid):
        return None
    return s


async def viewer(request: web.Request) -> tuple[AdminContext, Session]:
    """The logged-in viewer, or 401 ``not_authenticated`` (the page goes to the login form)."""
    s = await session_of(request)
    if s is None:
        raise NotAuthenticated("log in to the dashboard at /dashboard/login")
    return await context_for(request, s), s


async def login(request: web.Request) -> web.Response:
    """``{"credential": admin key or user token}`` → the session cookie, or a clear refusal."""
    check_origin(request)
    body = await read_json_object(request)
    given = body.get("credential")
    if not isinstance(given, str) or not given.strip() or len(given) > 4096:
        raise InvalidField("enter the admin key or your admin token", field="credential")
    given = given.strip()
    app = request.app
    codec, now = app[CODEC], time.time()
    if is_admin_key(given, app[ADMIN_KEY]):
        s = codec.new(KIND_KEY, now, admin_key=app[ADMIN_KEY])
        actor = "admin-key"
    else:
        try:
            claims = app[SIGNER].verify(given)
        except TokenInvalid:
            raise TokenInvalid("wrong admin key or token") from None
        await app[IDENTITY].check(claims)
        if not await app[DIRECTORY_STORE].admin_scopes(claims.user):
            raise Forbidden("you are not an administrator")
        s = codec.new(
            KIND_USER, now, user=claims.user, device=claims.device, issued_at_ms=claims.issued_at_ms
        )
        actor = claims.user
    ctx = await context_for(request, s)
    await app[TRAIL].record(actor, "dashboard.login", "dashboard", {"super": ctx.super})
    resp = web.json_response({"super": ctx.super, "user": ctx.user})
    resp.set_cookie(
        COOKIE,
        codec.encode(s),
        max_age=s.expires_at - int(now),
        path="/dashboard/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return resp


async def logout(request: web.Request) -> web.Response:
    """End the session: the cookie is cleared and every node refuses it until it expires."""
    s = await session_of(request)
    if s is not None:
        check_csrf(request, s)
        await request.app[LOGOUTS].log_out(s)  # recorded in the store before this answers
        await request.app[TRAIL].record(
            s.user if s.kind == KIND_USER and s.user else "admin-key",
            "dashboard.logout",
            "dashboard",
            {},
        )
    resp = web.json_response({"logged_out": True})
    resp.del_cookie(COOKIE, path="/dashboard/")
    return resp
