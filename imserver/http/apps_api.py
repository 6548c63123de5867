"""Signed app requests: who is calling, app registration, identity tokens.

Generic app auth, shared by every plug-in's app routes (``cards/http_routes.py``
calls ``signed_app``): the HMAC signature and replay window
(``imserver.appauth``), the nonce store, and each app's request budget. Also
the routes that are about apps themselves rather than what they send: the
admin registration (``POST /admin/v1/apps``) and the identity app's tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from imserver.appauth import verify_app_request
from imserver.config import CardsConfig
from imserver.directory.model import UNIT_ID_RE
from imserver.errors import InvalidField, RateLimited
from imserver.http.api import IDENTITY, TRAIL, json_response, parse_json, require_admin_key
from imserver.nonces import NonceStore
from imserver.protocol.fields import APP_ID_RE, is_user_id
from imserver.ratelimit import RateLimiter
from imserver.store.records import AppRecord


class AppStore(Protocol):
    """What app auth and registration need of the store."""

    async def get_app(self, app_id: str) -> AppRecord | None: ...

    async def upsert_app(self, app: AppRecord, now: int) -> None: ...


APP_STORE: web.AppKey[AppStore] = web.AppKey("app_store")
NONCES: web.AppKey[NonceStore] = web.AppKey("nonces")
#: The clock signed requests' timestamps are checked against (tests move it).
SIGNING_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("signing_clock")
#: The ``[cards]`` section: the signature window (apps are configured there).
APPS_CONFIG = web.AppKey("apps_config", CardsConfig)
APP_LIMITER = web.AppKey("app_limiter", RateLimiter)
#: "tokens": the app is the identity service and may issue user tokens.
APP_PERMISSIONS = ("tokens",)


async def signed_app(request: web.Request) -> tuple[AppRecord, Any]:
    """The signed-in app and its parsed JSON body, or the error saying why not."""
    raw = await request.read()
    app = await verify_app_request(
        request.headers,
        raw,
        request.app[APP_STORE].get_app,
        request.app[NONCES],
        request.app[APPS_CONFIG].signature_window_s,
        now=request.app.get(SIGNING_CLOCK, time.time)(),
    )
    wait = request.app[APP_LIMITER].take(app.app_id, time.monotonic())
    if wait:
        raise RateLimited(
            f"app {app.app_id} sends too many requests",
            details={"retry_after_ms": int(wait * 1000) + 1},
        )
    return app, parse_json(raw)


def parse_app(value: Any, path: str = "app") -> AppRecord:
    """An app definition from the admin API or the apps file."""
    if not isinstance(value, dict):
        raise InvalidField(f"{path} must be an object", field=path)
    app_id, secret = value.get("app_id"), value.get("secret")
    url, scope, name = value.get("callback_url"), value.get("scope", []), value.get("name", "")
    if not isinstance(app_id, str) or APP_ID_RE.fullmatch(app_id) is None:
        raise InvalidField(f"{path}.app_id must be 1-32 of a-z 0-9 _ -", field=f"{path}.app_id")
    if not isinstance(secret, str) or len(secret) < 32:
        raise InvalidField(f"{path}.secret must be at least 32 characters", field=f"{path}.secret")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidField(
            f"{path}.callback_url must be an http(s) URL", field=f"{path}.callback_url"
        )
    if not isinstance(name, str) or len(name) > 64:
        raise InvalidField(f"{path}.name must be at most 64 characters", field=f"{path}.name")
    if not isinstance(scope, list):
        raise InvalidField(f"{path}.scope must be a list", field=f"{path}.scope")
    for i, entry in enumerate(scope):
        ok = entry == "*" or (
            isinstance(entry, str)
            and (
                (entry.startswith("user:") and is_user_id(entry[5:]))
                or entry.startswith("group:g:")
                or (entry.startswith("unit:") and UNIT_ID_RE.fullmatch(entry[5:]) is not None)
            )
        )
        if not ok:
            raise InvalidField(
                f"{path}.scope[{i}] must be '*', 'user:<id>', 'group:<conv>' or 'unit:<id>'",
                field=f"{path}.scope[{i}]",
            )
    permissions = value.get("permissions", [])
    if not isinstance(permissions, list) or any(p not in APP_PERMISSIONS for p in permissions):
        raise InvalidField(
            f"{path}.permissions must be a list of {', '.join(APP_PERMISSIONS)}",
            field=f"{path}.permissions",
        )
    return AppRecord(app_id, name, secret, url, tuple(scope), tuple(dict.fromkeys(permissions)))


async def admin_upsert_app(request: web.Request) -> web.Response:
    require_admin_key(request)
    app = parse_app(parse_json(await request.read()))
    await request.app[APP_STORE].upsert_app(app, int(time.time() * 1000))
    await request.app[TRAIL].record(
        "admin-key",
        "admin.app_upsert",
        app.app_id,
        {"callback_url": app.callback_url, "scope": list(app.scope)},
    )
    return json_response({"app_id": app.app_id}, status=201)


async def issue_tokens(request: web.Request) -> web.Response:
    """The identity app asks for a user's tokens (signed; needs the "tokens" permission)."""
    app, body = await signed_app(request)
    return json_response(await request.app[IDENTITY].issue(app, body), status=201)


async def refresh_tokens(request: web.Request) -> web.Response:
    """A client trades its refresh token for a new pair (no other credential)."""
    body = parse_json(await request.read())
    return json_response(await request.app[IDENTITY].refresh(body))


def add_app_routes(
    app: web.Application,
    store: AppStore,
    nonces: NonceStore,
    config: CardsConfig,
    limiter: RateLimiter,
) -> None:
    """Set up app auth on ``app`` and add the app routes (before any plug-in's)."""
    app[APP_STORE] = store
    app[NONCES] = nonces
    app[APPS_CONFIG] = config
    app[APP_LIMITER] = limiter
    r = app.router
    r.add_post("/api/v1/apps/tokens", issue_tokens)
    r.add_post("/api/v1/tokens/refresh", refresh_tokens)
    r.add_post("/admin/v1/apps", admin_upsert_app)
