"""Admin API for the organisation directory (docs/admin.md)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from imserver.directory.model import SENSITIVE_PROFILE_KEYS, UNIT_ID_RE
from imserver.errors import InvalidField, NoSuchUser
from imserver.http.admin_auth import DIRECTORY_STORE, admin_of
from imserver.http.api import IDENTITY, TRAIL, json_response, read_json_object
from imserver.masking import PII_READ, mask
from imserver.protocol.fields import is_user_id
from imserver.services.directory import DirectoryService

DIRECTORY = web.AppKey("directory", DirectoryService)


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidField(f"'{name}' must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise InvalidField(f"'{name}' must be {lo}-{hi}", field=name)
    return value


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in ("1", "true", "yes")


async def sync(request: web.Request) -> web.Response:
    """NDJSON body, streamed: ``?mode=full`` (absence removes) or ``incremental``."""
    ctx = await admin_of(request)
    ctx.require_super()
    mode = request.query.get("mode", "incremental")
    if mode not in ("full", "incremental"):
        raise InvalidField("'mode' must be full or incremental", field="mode")

    async def chunks() -> Any:
        async for chunk in request.content.iter_chunked(64 * 1024):
            yield chunk

    report = await request.app[DIRECTORY].sync(chunks(), full=mode == "full")
    await request.app[TRAIL].record(
        "admin-key",
        "directory.sync",
        mode,
        {**report.to_json(), "removed_users": report.removed_users[:1000]},
    )
    return json_response({"mode": mode, **report.to_json()})


async def get_unit(request: web.Request) -> web.Response:
    ctx = await admin_of(request)
    directory = request.app[DIRECTORY]
    unit = await directory.unit(request.match_info["unit_id"])
    ctx.require(unit)
    depth = _int(request, "depth", 1, 0, 10)
    return json_response({"units": await directory.subtree(unit, depth)})


async def unit_members(request: web.Request) -> web.Response:
    ctx = await admin_of(request)
    directory = request.app[DIRECTORY]
    unit = await directory.unit(request.match_info["unit_id"])
    ctx.require(unit)
    limit = _int(request, "limit", 500, 1, 5000)
    after = request.query.get("after", "")
    return json_response(await directory.members(unit, _flag(request, "recursive"), after, limit))


async def get_user(request: web.Request) -> web.Response:
    ctx = await admin_of(request)
    user = request.match_info["user_id"]
    directory = request.app[DIRECTORY]
    placement = await directory.placement(user)
    profile = await request.app[DIRECTORY_STORE].member_profile(user)
    if profile is None or (not ctx.super and not placement):
        raise NoSuchUser(f"no user {user!r}")
    units = await request.app[DIRECTORY_STORE].units_by_ids(p["unit"]["id"] for p in placement)
    if not ctx.super:
        # A scoped admin sees only the memberships inside their subtrees.
        placement = [p for p in placement if ctx.covers(units[p["unit"]["id"]])]
        if not placement:
            raise NoSuchUser(f"no user {user!r}")  # outside the scope: not even its existence
    fields = directory.sealer_open(profile)
    reveal = ctx.super or bool(
        ctx.user and await request.app[DIRECTORY_STORE].users_with_scope([ctx.user], PII_READ)
    )
    shown = {
        k: mask(v) if k in SENSITIVE_PROFILE_KEYS and not reveal else v for k, v in fields.items()
    }
    return json_response({"user": user, "name": profile.name, "profile": shown, "units": placement})


async def grant(request: web.Request) -> web.Response:
    ctx = await admin_of(request)
    body = await read_json_object(request)
    user, unit_id = body.get("user"), body.get("unit")
    if not is_user_id(user):
        raise InvalidField("'user' must be a user id", field="user")
    if not isinstance(unit_id, str) or UNIT_ID_RE.fullmatch(unit_id) is None:
        raise InvalidField("'unit' must be a unit id", field="unit")
    assert isinstance(user, str)
    unit = await request.app[DIRECTORY].unit(unit_id)
    ctx.require(unit)  # an admin may delegate inside their own subtree
    store = request.app[DIRECTORY_STORE]
    if await store.member_profile(user) is None:
        raise NoSuchUser(f"no user {user!r}")
    actor = ctx.user or "admin-key"
    if request.method == "DELETE":
        removed = await store.revoke_admin(user, unit_id)
        await request.app[TRAIL].record(actor, "admin.revoke", user, {"unit": unit_id})
        return json_response({"user": user, "unit": unit_id, "revoked": removed})
    await store.grant_admin(user, unit_id, int(time.time() * 1000))
    await request.app[TRAIL].record(actor, "admin.grant", user, {"unit": unit_id})
    return json_response({"user": user, "unit": unit_id, "granted": True}, status=201)


async def scopes(request: web.Request) -> web.Response:
    """Grant (POST) or withdraw (DELETE) a user scope; only ``pii:read`` exists today."""
    ctx = await admin_of(request)
    ctx.require_super()
    body = await read_json_object(request)
    user, scope = body.get("user"), body.get("scope")
    if not is_user_id(user):
        raise InvalidField("'user' must be a user id", field="user")
    if scope != PII_READ:
        raise InvalidField(f"'scope' must be {PII_READ!r}", field="scope")
    assert isinstance(user, str)
    granted = request.method == "POST"
    changed = await request.app[DIRECTORY_STORE].set_scope(
        user, PII_READ, granted, int(time.time() * 1000)
    )
    await request.app[TRAIL].record(
        "admin-key",
        "admin.scope_grant" if granted else "admin.scope_revoke",
        user,
        {"scope": scope},
    )
    return json_response({"user": user, "scope": scope, "granted": granted, "changed": changed})


async def revoke(request: web.Request) -> web.Response:
    """Sign a user (or one device) out everywhere: tokens refused, sockets closed."""
    ctx = await admin_of(request)
    body = await read_json_object(request)
    user, device = body.get("user"), body.get("device")
    if not is_user_id(user):
        raise InvalidField("'user' must be a user id", field="user")
    if device is not None and not is_user_id(device):
        raise InvalidField("'device' must be a device id", field="device")
    assert isinstance(user, str)
    if not ctx.super:
        placement = await request.app[DIRECTORY].placement(user)
        units = await request.app[DIRECTORY_STORE].units_by_ids(p["unit"]["id"] for p in placement)
        if not any(ctx.covers(u) for u in units.values()):
            raise NoSuchUser(f"no user {user!r}")
    await request.app[IDENTITY].revoke(ctx.user or "admin-key", user, device, reason="admin")
    return json_response({"user": user, "device": device, "revoked": True})


async def whoami(request: web.Request) -> web.Response:
    ctx = await admin_of(request)
    return json_response(
        {
            "super": ctx.super,
            "user": ctx.user,
            "scopes": [{"id": u.id, "name": u.name, "path": u.path} for u in ctx.scopes],
        }
    )


def add_directory_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/admin/v1/directory/sync", sync)
    r.add_get("/admin/v1/units/{unit_id}", get_unit)
    r.add_get("/admin/v1/units/{unit_id}/members", unit_members)
    r.add_get("/admin/v1/users/{user_id}", get_user)
    r.add_post("/admin/v1/admins", grant)
    r.add_delete("/admin/v1/admins", grant)
    r.add_get("/admin/v1/whoami", whoami)
    r.add_post("/admin/v1/revoke", revoke)
    r.add_post("/admin/v1/scopes", scopes)
    r.add_delete("/admin/v1/scopes", scopes)
