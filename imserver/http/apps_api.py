"""Signed app requests: who is calling, app registration, identity tokens.

Generic app auth, shared by every plug-in's app routes (``cards/http_routes.py``
calls ``signed_app``): the HMAC signature and replay window
(``imserver.appauth``), the nonce store, and each app's request budget. Also
the routes that are about apps themselves rather than what they send: the
admin lifecycle (register, list, show, delete, rotate the secret with an
overlap; docs/admin.md "Apps") and the identity app's tokens.

A deletion, a rotation or a replacement is announced (``TOPIC_APP_CHANGED``)
so that what lives on past the request is revoked too: plug-ins close an
app's live connections on every node (cards: its streams, docs/cards.md
"Stream mode"). This node's listeners are called at once, so the change holds
here even while the bus is slow.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from aiohttp import web

from imserver.appauth import verify_app_request
from imserver.bus.base import TOPIC_APP_CHANGED, Bus, Handler
from imserver.config import CardsConfig
from imserver.directory.model import UNIT_ID_RE
from imserver.errors import AppInAppsFile, InvalidField, NoSuchApp, RateLimited
from imserver.http.api import (
    IDENTITY,
    json_response,
    parse_json,
    read_json_object,
    require_admin_key,
)
from imserver.nonces import NonceStore
from imserver.protocol.fields import APP_ID_RE, is_user_id
from imserver.ratelimit import RateLimiter
from imserver.store.records import AppRecord, AuditEntry, StoredApp


class AppStore(Protocol):
    """What app auth and the app lifecycle need of the store."""

    async def get_app(self, app_id: str) -> AppRecord | None: ...

    async def upsert_app(
        self, app: AppRecord, now: int, audit: AuditEntry | None = None
    ) -> None: ...

    async def list_apps(self) -> list[StoredApp]: ...

    async def delete_app(self, app_id: str, now: int, audit: AuditEntry) -> bool: ...

    async def rotate_app_secret(
        self, app_id: str, secret: str, previous_until: int, now: int, audit: AuditEntry
    ) -> bool: ...


APP_STORE: web.AppKey[AppStore] = web.AppKey("app_store")
NONCES: web.AppKey[NonceStore] = web.AppKey("nonces")
#: The clock signed requests' timestamps are checked against (tests move it).
SIGNING_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("signing_clock")
#: The ``[cards]`` section: the signature window (apps are configured there).
APPS_CONFIG = web.AppKey("apps_config", CardsConfig)
APP_LIMITER = web.AppKey("app_limiter", RateLimiter)
#: "tokens": the app is the identity service and may issue user tokens.
APP_PERMISSIONS = ("tokens",)
#: App events an app may subscribe to (docs/cards.md "App events"); none by default.
APP_EVENTS: Final = ("overdue", "escalated", "reminded", "ding_confirmed", "card_read", "delivered")
#: Ids of the apps defined in ``cards.apps_file`` (set at start): the file owns
#: them, so the API may not delete them or rotate their secrets.
FILE_APP_IDS: web.AppKey[frozenset[str]] = web.AppKey("file_app_ids")
#: Longest rotation overlap: the old secret of a leaked pair must not live on for long.
MAX_OVERLAP_S: Final = 7 * 24 * 3600
ADMIN_ACTOR: Final = "admin-key"
#: Called at once on this node with each ``TOPIC_APP_CHANGED`` payload it announces.
APP_CHANGE_LISTENERS: web.AppKey[list[Handler]] = web.AppKey("app_change_listeners")
#: Where app changes are announced to every node (absent: this node only).
APP_BUS: web.AppKey[Bus] = web.AppKey("app_bus")


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


def checked_secret(secret: Any, field: str) -> str:
    """``secret`` if it is a string of at least 32 characters, else ``invalid_field``."""
    if not isinstance(secret, str) or len(secret) < 32:
        raise InvalidField(f"{field} must be at least 32 characters", field=field)
    return secret


def parse_app(value: Any, path: str = "app") -> AppRecord:
    """An app definition from the admin API or the apps file."""
    if not isinstance(value, dict):
        raise InvalidField(f"{path} must be an object", field=path)
    app_id, secret = value.get("app_id"), value.get("secret")
    url, scope, name = value.get("callback_url"), value.get("scope", []), value.get("name", "")
    if not isinstance(app_id, str) or APP_ID_RE.fullmatch(app_id) is None:
        raise InvalidField(f"{path}.app_id must be 1-32 of a-z 0-9 _ -", field=f"{path}.app_id")
    secret = checked_secret(secret, f"{path}.secret")
    # "" (given explicitly) registers a stream-only app: its callbacks go over the
    # WebSocket it opens to the server (docs/cards.md "Stream mode").
    if not isinstance(url, str) or (url and not url.startswith(("http://", "https://"))):
        raise InvalidField(
            f'{path}.callback_url must be an http(s) URL, or "" for a stream-only app',
            field=f"{path}.callback_url",
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
    return AppRecord(
        app_id,
        name,
        secret,
        url,
        tuple(scope),
        tuple(dict.fromkeys(permissions)),
        events=_events(value.get("events", []), f"{path}.events"),
    )


def _events(value: Any, path: str) -> tuple[str, ...]:
    """The app events subscribed to: a list of known names (repeats collapse)."""
    if not isinstance(value, list):
        raise InvalidField(
            f"{path} must be a list of event names ({', '.join(APP_EVENTS)})", field=path
        )
    for i, name in enumerate(value):
        if name not in APP_EVENTS:
            raise InvalidField(
                f"{path}[{i}] must be one of {', '.join(APP_EVENTS)}", field=f"{path}[{i}]"
            )
    return tuple(dict.fromkeys(value))


async def announce_app_changed(request: web.Request, app_id: str, change: str) -> None:
    """After the store has the change: tell this node's listeners now, then every node.

    ``change`` ("deleted", "secret_rotated", "replaced") is for logs; listeners
    read the app from the store again, so a repeated or late notice is harmless.
    """
    payload = {"app_id": app_id, "change": change}
    for listener in request.app.get(APP_CHANGE_LISTENERS, ()):
        listener(payload)
    bus = request.app.get(APP_BUS)
    if bus is not None:
        await bus.publish(TOPIC_APP_CHANGED, payload)


async def admin_upsert_app(request: web.Request) -> web.Response:
    """Register or replace an app (the whole registration: a running overlap ends)."""
    require_admin_key(request)
    app = parse_app(parse_json(await request.read()))
    details = {
        "callback_url": app.callback_url,
        "scope": list(app.scope),
        "events": list(app.events),
    }
    audit = AuditEntry(ADMIN_ACTOR, "admin.app_upsert", app.app_id, details)
    await request.app[APP_STORE].upsert_app(app, _now_ms(request), audit)
    await announce_app_changed(request, app.app_id, "replaced")  # maybe a new secret
    return json_response({"app_id": app.app_id}, status=201)


async def admin_list_apps(request: web.Request) -> web.Response:
    require_admin_key(request)
    now = _now_ms(request)
    apps = await request.app[APP_STORE].list_apps()
    return json_response({"apps": [_app_view(request, a, now) for a in apps]})


async def admin_get_app(request: web.Request) -> web.Response:
    require_admin_key(request)
    return json_response(_app_view(request, await _stored(request), _now_ms(request)))


async def admin_delete_app(request: web.Request) -> web.Response:
    """Remove an app: it can no longer sign; its cards stay; pending callbacks fail."""
    require_admin_key(request)
    stored = await _stored(request, refuse_file_app="deleted")
    app = stored.app
    details = {"name": app.name, "callback_url": app.callback_url, "scope": list(app.scope)}
    audit = AuditEntry(ADMIN_ACTOR, "admin.app_delete", app.app_id, details)
    if not await request.app[APP_STORE].delete_app(app.app_id, _now_ms(request), audit):
        raise NoSuchApp(f"no app {app.app_id!r}")  # deleted meanwhile
    await announce_app_changed(request, app.app_id, "deleted")  # its live streams close
    return json_response({"app_id": app.app_id, "deleted": True})


async def admin_rotate_secret(request: web.Request) -> web.Response:
    """New secret now; the old one keeps verifying the app's requests for ``overlap_s``."""
    require_admin_key(request)
    body = await read_json_object(request)
    overlap = body.get("overlap_s")
    if (
        isinstance(overlap, bool)
        or not isinstance(overlap, int | float)
        or not 0 <= overlap <= MAX_OVERLAP_S
    ):
        raise InvalidField(
            f"overlap_s must be a number of seconds from 0 to {MAX_OVERLAP_S} (7 days)",
            field="overlap_s",
        )
    generated = "secret" not in body
    secret = secrets.token_urlsafe(32) if generated else checked_secret(body["secret"], "secret")
    stored = await _stored(request, refuse_file_app="rotated through the API")
    if secret in (stored.app.secret, stored.app.previous_secret):
        raise InvalidField("secret must differ from the current and previous ones", field="secret")
    now = _now_ms(request)
    until = now + int(overlap * 1000)
    details = {"overlap_s": overlap, "previous_secret_valid_until": until, "generated": generated}
    audit = AuditEntry(ADMIN_ACTOR, "admin.app_secret_rotate", stored.app.app_id, details)
    if not await request.app[APP_STORE].rotate_app_secret(
        stored.app.app_id, secret, until, now, audit
    ):
        raise NoSuchApp(f"no app {stored.app.app_id!r}")  # deleted meanwhile
    # Streams on the old secret close when it stops verifying (at once with overlap 0).
    await announce_app_changed(request, stored.app.app_id, "secret_rotated")
    answer: dict[str, Any] = {"app_id": stored.app.app_id, "previous_secret_valid_until": until}
    if generated:
        answer["secret"] = secret  # shown this once; never stored in the audit log
    return json_response(answer)


async def _stored(request: web.Request, refuse_file_app: str = "") -> StoredApp:
    """The app named in the path, or ``no_such_app``; with ``refuse_file_app``, not a file's."""
    app_id = request.match_info["app_id"]
    found = [a for a in await request.app[APP_STORE].list_apps() if a.app.app_id == app_id]
    if not found:
        raise NoSuchApp(f"no app {app_id[:32]!r}; GET /admin/v1/apps lists them")
    if refuse_file_app and app_id in request.app.get(FILE_APP_IDS, frozenset()):
        raise AppInAppsFile(
            f"app {app_id!r} is defined in cards.apps_file and cannot be {refuse_file_app}:"
            " the file would bring it back at the next start; change the file instead"
        )
    return found[0]


def _app_view(request: web.Request, stored: StoredApp, now_ms: int) -> dict[str, Any]:
    """What an admin may see of an app: everything but its secrets."""
    app = stored.app
    rotating = len(app.secrets_valid_at(now_ms)) > 1
    return {
        "app_id": app.app_id,
        "name": app.name,
        "callback_url": app.callback_url,
        "scope": list(app.scope),
        "permissions": list(app.permissions),
        "events": list(app.events),
        "source": "apps_file"
        if app.app_id in request.app.get(FILE_APP_IDS, frozenset())
        else "admin",
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
        "secret_rotation": (
            {"previous_secret_valid_until": app.previous_secret_until} if rotating else None
        ),
    }


def _now_ms(request: web.Request) -> int:
    """Now by the clock signatures are checked against, so an overlap ends when it says."""
    return int(request.app.get(SIGNING_CLOCK, time.time)() * 1000)


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
    bus: Bus | None = None,
) -> None:
    """Set up app auth on ``app`` and add the app routes (before any plug-in's).

    ``bus``: where app changes are announced to every node (``TOPIC_APP_CHANGED``).
    """
    app[APP_STORE] = store
    app[APP_CHANGE_LISTENERS] = []  # plug-ins add theirs (cards: stream revocation)
    if bus is not None:
        app[APP_BUS] = bus
    app[NONCES] = nonces
    app[APPS_CONFIG] = config
    app[APP_LIMITER] = limiter
    r = app.router
    r.add_post("/api/v1/apps/tokens", issue_tokens)
    r.add_post("/api/v1/tokens/refresh", refresh_tokens)
    r.add_post("/admin/v1/apps", admin_upsert_app)
    r.add_get("/admin/v1/apps", admin_list_apps)
    r.add_get("/admin/v1/apps/{app_id}", admin_get_app)
    r.add_delete("/admin/v1/apps/{app_id}", admin_delete_app)
    r.add_post("/admin/v1/apps/{app_id}/secret", admin_rotate_secret)
