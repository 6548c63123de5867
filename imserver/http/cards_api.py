"""HTTP routes for cards: signed app routes, user routes, admin routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from cards.service import CardService, FullStore
from imserver.appauth import verify_app_request
from imserver.config import CardsConfig
from imserver.directory.model import UNIT_ID_RE
from imserver.errors import InvalidField, NoSuchCallback, RateLimited
from imserver.http.api import (
    IDENTITY,
    SIGNER,
    TRAIL,
    json_response,
    parse_json,
    require_admin_key,
    user_claims,
)
from imserver.nonces import NonceStore
from imserver.protocol.fields import APP_ID_RE, is_user_id
from imserver.ratelimit import RateLimiter
from imserver.services.caller import Caller
from imserver.store.records import AppRecord

CARDS = web.AppKey("cards", CardService)
CARD_STORE = web.AppKey("card_store", object)
NONCES: web.AppKey[NonceStore] = web.AppKey("nonces")
#: The clock signed requests' timestamps are checked against (tests move it).
SIGNING_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("signing_clock")
CARDS_CONFIG = web.AppKey("cards_config", CardsConfig)
WAKE = web.AppKey("wake_callbacks", object)
APP_LIMITER = web.AppKey("app_limiter", RateLimiter)
#: "tokens": the app is the identity service and may issue user tokens.
APP_PERMISSIONS = ("tokens",)


def _store(request: web.Request) -> FullStore:
    store: FullStore = request.app[CARD_STORE]  # type: ignore[assignment]
    return store


async def _app(request: web.Request) -> tuple[AppRecord, Any]:
    """The signed-in app and its parsed JSON body."""
    raw = await request.read()
    app = await verify_app_request(
        request.headers,
        raw,
        _store(request).get_app,
        request.app[NONCES],
        request.app[CARDS_CONFIG].signature_window_s,
        now=request.app.get(SIGNING_CLOCK, time.time)(),
    )
    wait = request.app[APP_LIMITER].take(app.app_id, time.monotonic())
    if wait:
        raise RateLimited(
            f"app {app.app_id} sends too many requests",
            details={"retry_after_ms": int(wait * 1000) + 1},
        )
    return app, parse_json(raw)


async def push_card(request: web.Request) -> web.Response:
    app, body = await _app(request)
    result = await request.app[CARDS].push(app, body)
    return json_response(result, status=200 if result["duplicate"] else 201)


async def update_card(request: web.Request) -> web.Response:
    app, body = await _app(request)
    result = await request.app[CARDS].update(app, request.match_info["out_track_id"], body)
    return json_response(result)


async def get_card(request: web.Request) -> web.Response:
    app, _ = await _app(request)
    return json_response(
        await request.app[CARDS].get_for_app(app, request.match_info["out_track_id"])
    )


async def send_notice(request: web.Request) -> web.Response:
    app, body = await _app(request)
    return json_response(await request.app[CARDS].notice(app, body), status=201)


async def notice_ding(request: web.Request) -> web.Response:
    app, _ = await _app(request)
    return json_response(
        await request.app[CARDS].notice_ding_status(app, request.match_info["notice_id"])
    )


async def _caller(request: web.Request) -> Caller:
    claims = await user_claims(request, request.app[SIGNER])
    return Caller(claims.user, claims.device)


async def act(request: web.Request) -> web.Response:
    caller = await _caller(request)
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise InvalidField("body must be a JSON object", field="body")
    action, action_id = body.get("action"), body.get("action_id")
    if not isinstance(action, str) or not 1 <= len(action) <= 32:
        raise InvalidField("'action' must be the id of one of the card's actions", field="action")
    if not isinstance(action_id, str) or not 1 <= len(action_id) <= 64:
        raise InvalidField("'action_id' must be a string of 1-64 characters", field="action_id")
    result = await request.app[CARDS].act(
        caller, request.match_info["card_id"], action, action_id, body.get("inputs")
    )
    return json_response(result)


async def todo(request: web.Request) -> web.Response:
    caller = await _caller(request)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise InvalidField("'limit' must be an integer", field="limit") from None
    if not 1 <= limit <= 200:
        raise InvalidField("'limit' must be 1-200", field="limit")
    return json_response(await request.app[CARDS].todo(caller, limit))


# -- admin --------------------------------------------------------------------
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
    await _store(request).upsert_app(app, int(time.time() * 1000))
    await request.app[TRAIL].record(
        "admin-key",
        "admin.app_upsert",
        app.app_id,
        {"callback_url": app.callback_url, "scope": list(app.scope)},
    )
    return json_response({"app_id": app.app_id}, status=201)


async def admin_list_callbacks(request: web.Request) -> web.Response:
    require_admin_key(request)
    state = request.query.get("state", "failed")
    if state not in ("pending", "delivered", "failed"):
        raise InvalidField("'state' must be pending, delivered or failed", field="state")
    items = await _store(request).list_callbacks(state, 500)
    return json_response(
        {
            "callbacks": [
                {
                    "card_id": i.card_id,
                    "action_id": i.action_id,
                    "app_id": i.app_id,
                    "state": i.state,
                    "attempts": i.attempts,
                    "last_error": i.last_error,
                }
                for i in items
            ]
        }
    )


async def admin_retry_callback(request: web.Request) -> web.Response:
    require_admin_key(request)
    store = _store(request)
    item = await store.get_callback(request.match_info["card_id"], request.match_info["action_id"])
    if item is None:
        raise NoSuchCallback("no such callback")
    await store.retry_callback(item.id, int(time.time() * 1000))
    await request.app[TRAIL].record(
        "admin-key", "admin.callback_retry", item.card_id, {"action_id": item.action_id}
    )
    await request.app[CARDS].set_callback_state(item.card_id, "pending")
    request.app[WAKE]()  # type: ignore[operator]
    return json_response({"card_id": item.card_id, "action_id": item.action_id, "state": "pending"})


async def issue_tokens(request: web.Request) -> web.Response:
    """The identity app asks for a user's tokens (signed; needs the "tokens" permission)."""
    app, body = await _app(request)
    return json_response(await request.app[IDENTITY].issue(app, body), status=201)


async def refresh_tokens(request: web.Request) -> web.Response:
    """A client trades its refresh token for a new pair (no other credential)."""
    body = parse_json(await request.read())
    return json_response(await request.app[IDENTITY].refresh(body))


def add_card_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/apps/cards", push_card)
    r.add_patch("/api/v1/apps/cards/{out_track_id}", update_card)
    r.add_get("/api/v1/apps/cards/{out_track_id}", get_card)
    r.add_post("/api/v1/apps/notices", send_notice)
    r.add_post("/api/v1/apps/tokens", issue_tokens)
    r.add_post("/api/v1/tokens/refresh", refresh_tokens)
    r.add_get("/api/v1/apps/notices/{notice_id}/ding", notice_ding)
    r.add_post("/api/v1/cards/{card_id}/act", act)
    r.add_get("/api/v1/todo", todo)
    r.add_post("/admin/v1/apps", admin_upsert_app)
    r.add_get("/admin/v1/callbacks", admin_list_callbacks)
    r.add_post("/admin/v1/callbacks/{card_id}/{action_id}/retry", admin_retry_callback)
