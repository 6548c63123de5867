"""HTTP routes. Errors are ``{"error": {"code", "message"}}`` with the error's status."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from imserver.audit_trail import AuditTrail
from imserver.errors import (
    BadRequest,
    Forbidden,
    ImError,
    Internal,
    InvalidField,
    MethodNotAllowed,
    NotAuthenticated,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    RouteNotFound,
    StoreUnavailable,
    TokenInvalid,
)
from imserver.http.openapi import build_spec
from imserver.http.request_ids import request_id_middleware
from imserver.metrics import Metrics, sample_backlog
from imserver.protocol.fields import FILE_ID_RE, is_user_id
from imserver.ratelimit import RateLimiter
from imserver.services.files import FileService
from imserver.services.identity import IdentityService
from imserver.store.base import Store
from imserver.tokens import TokenClaims, TokenSigner

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SIGNER = web.AppKey("signer", TokenSigner)
FILES = web.AppKey("files", FileService)
STORE = web.AppKey("store", object)
METRICS = web.AppKey("metrics", Metrics)
ADMIN_KEY = web.AppKey("admin_key", str)
TRAIL = web.AppKey("audit_trail", AuditTrail)  # set by the composition root
IDENTITY = web.AppKey("identity", IdentityService)
#: The per-user request budget, shared with the WebSocket gateway (set by the
#: composition root; absent: HTTP user routes are not limited).
USER_LIMITER = web.AppKey("user_limiter", RateLimiter)
#: The networked bus's state for ``/healthz`` (absent: the in-process bus).
BusHealth = Callable[[], dict[str, Any]]
BUS_HEALTH: web.AppKey[BusHealth] = web.AppKey("bus_health")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def json_response(data: Any, *, status: int = 200, headers: Any = None) -> web.Response:
    """JSON with Chinese text as itself (readable in curl and logs), via orjson."""
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def error_response(err: ImError) -> web.Response:
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.field:
        error["field"] = err.field
    if err.details:
        error["details"] = err.details
    headers = {}
    if err.details and "retry_after_ms" in err.details:
        headers["Retry-After"] = str(max(1, -(-int(err.details["retry_after_ms"]) // 1000)))
    return json_response({"error": error}, status=err.http_status, headers=headers)


#: aiohttp's own refusals (routing, body size, parsing) as errors of our hierarchy.
_STATUS_ERRORS: dict[int, type[ImError]] = {
    400: BadRequest,
    404: RouteNotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: PayloadTooLarge,
    500: Internal,
}


def error_for_status(status: int, message: str) -> ImError:
    """The stable-code error for a status aiohttp chose (any other 4xx: ``bad_request``)."""
    cls = _STATUS_ERRORS.get(status)
    if cls is not None:
        return cls(message)
    err = BadRequest(message) if status < 500 else Internal(message)
    err.http_status = status  # keep aiohttp's exact status; the code stays stable
    return err


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a route or aiohttp raises becomes ``{"error": {"code", "message"}}``.

    The one place HTTP errors are shaped: a client can always parse the body
    and branch on ``code``, and an unexpected fault is a logged ``internal``,
    never aiohttp's plain-text 500 page.
    """
    errors = request.app[METRICS].http_errors
    try:
        return await handler(request)
    except ImError as e:
        errors.labels(e.code).inc()
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise  # redirects and the like are answers, not errors
        err = error_for_status(e.status, e.reason)
        errors.labels(err.code).inc()
        resp = error_response(err)
        if "Allow" in e.headers:  # 405 says which methods would work
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except ConnectionError:
        raise  # the client went away mid-request; nobody to answer
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path)
        errors.labels(Internal.code).inc()
        return error_response(Internal("internal server error; the request may not have completed"))


def is_admin_key(given: str, key: str) -> bool:
    """Constant-time comparison with the operator's key (never matches when unset)."""
    return bool(key) and hmac.compare_digest(given.encode(), key.encode())


def require_admin_key(request: web.Request) -> None:
    """The operator's admin key, or 401 (missing) / 403 (wrong)."""
    key = request.app[ADMIN_KEY]
    if not key:
        raise NotAuthenticated("the admin API is disabled (set auth.admin_api_key)")
    header = request.headers.get("Authorization", "")
    given = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    if not given:
        raise NotAuthenticated("send 'Authorization: Bearer <admin key>'")
    if not is_admin_key(given, key):
        raise Forbidden("wrong admin key")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON (empty: ``{}``), or ``invalid_field`` — never a 500."""
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise InvalidField("body must be JSON", field="body") from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise InvalidField("body must be a JSON object", field="body")
    return body


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise NotAuthenticated("send 'Authorization: Bearer <token>'")
    return header[len("Bearer ") :].strip()


async def user_claims(request: web.Request, signer: TokenSigner) -> TokenClaims:
    """The bearer token's claims, for a user that still exists."""
    claims = signer.verify(_bearer(request))
    store: Store = request.app[STORE]  # type: ignore[assignment]
    if not await store.existing_users([claims.user]):
        raise TokenInvalid("token rejected: unknown user")
    await request.app[IDENTITY].check(claims)
    take_user_budget(request, claims.user)
    return claims


def take_user_budget(request: web.Request, user: str) -> None:
    """One token of ``user``'s budget -- the same one their sockets draw on -- or 429."""
    limiter = request.app.get(USER_LIMITER)
    if limiter is None:
        return
    wait = limiter.take(user, time.monotonic())
    if wait:
        raise RateLimited(
            "too many requests; slow down", details={"retry_after_ms": int(wait * 1000) + 1}
        )


async def _user(request: web.Request) -> TokenClaims:
    return await user_claims(request, request.app[SIGNER])


STORE_PROBE_TIMEOUT_S = 2.0
"""How long ``/healthz`` waits for the store's answer before calling it unavailable."""


def _store_backend(store: object) -> str:
    """``postgres`` or ``sqlite``: the engine behind ``store``, named after its package."""
    return "postgres" if ".postgres." in type(store).__module__ else "sqlite"


async def _store_health(store: Store) -> dict[str, Any]:
    """One real read (a conversation that does not exist), timed; ``ok`` false if it fails.

    A read through the ``Store`` interface rather than a bare ``SELECT 1``: it
    takes the path every request takes (the reader thread, the pool), so a
    stuck reader or a dropped schema shows here too.
    """
    health: dict[str, Any] = {"backend": _store_backend(store), "ok": True}
    started = time.monotonic()
    try:
        async with asyncio.timeout(STORE_PROBE_TIMEOUT_S):
            await store.get_conversation("healthz:probe")
    except Exception as e:  # any failure is the answer: the store cannot serve
        health.update(ok=False, error=f"{type(e).__name__}: {e}"[:300])
    else:
        health["latency_ms"] = round((time.monotonic() - started) * 1000, 2)
    return health


async def healthz(request: web.Request) -> web.Response:
    """Each dependency: the store always, the Redis bus when configured.

    ``degraded`` (still 200) while Redis is away: the node serves its own
    users and fills what it missed when Redis is back, so a load balancer
    must not take it out. A store that cannot answer is 503
    ``store_unavailable``: no request could be served.
    """
    store = await _store_health(request.app[STORE])  # type: ignore[arg-type]
    body: dict[str, Any] = {"status": "ok", "store": store}
    bus_health = request.app.get(BUS_HEALTH)
    if bus_health is not None:  # absent: the in-process bus, nothing that can be away
        body["bus"] = bus_health()
        if not body["bus"]["connected"]:
            body["status"] = "degraded"
    if not store["ok"]:
        body["status"] = "unavailable"
        body["error"] = {
            "code": StoreUnavailable.code,
            "message": f"the {store['backend']} store does not answer: {store['error']}",
        }
        return json_response(body, status=StoreUnavailable.http_status)
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; the backlog gauges are read from the store now."""
    registry = request.app[METRICS]
    try:
        async with asyncio.timeout(STORE_PROBE_TIMEOUT_S):
            await sample_backlog(registry, request.app[STORE])  # type: ignore[arg-type]
    except Exception as e:  # the store's trouble shows in /healthz; keep serving metrics
        log.warning("metrics: cannot read the backlog gauges: %s: %s", type(e).__name__, e)
    return web.Response(body=registry.render(), content_type="text/plain")


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of every route (imserver/http/openapi.py)."""
    return json_response(build_spec())


async def upload_file(request: web.Request) -> web.Response:
    claims = await _user(request)
    name = request.query.get("name", "")
    if not 1 <= len(name) <= 255 or "/" in name or "\\" in name:
        raise InvalidField("query 'name' must be a file name of 1-255 characters", field="name")
    files = request.app[FILES]
    mime = files.check_type(request.headers.get("Content-Type", "application/octet-stream"))

    async def chunks() -> Any:
        async for chunk in request.content.iter_chunked(64 * 1024):
            yield chunk

    meta = await files.upload(claims.user, name, mime, chunks())
    return json_response(
        {"id": meta.id, "name": name, "size": meta.size, "mime": meta.mime}, status=201
    )


async def download_file(request: web.Request) -> web.StreamResponse:
    claims = await _user(request)
    file_id = request.match_info["file_id"]
    if FILE_ID_RE.fullmatch(file_id) is None:
        raise InvalidField("file id must be a lowercase sha256 hex digest", field="id")
    meta, path = await request.app[FILES].open_for(claims.user, file_id)
    name = request.query.get("name", "")
    if not is_file_name(name):
        name = file_id
    return web.FileResponse(path, headers=file_headers(meta.mime, name))


#: Types a browser may show in place: raster images only (never SVG, HTML,
#: PDF or text, which can carry script or be sniffed into it).
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif"})


def is_file_name(name: str) -> bool:
    """A plain file name: 1-255 characters, no path separators, no control characters."""
    return (
        1 <= len(name) <= 255
        and "/" not in name
        and "\\" not in name
        and all(ch >= " " and ch != "\x7f" for ch in name)
    )


def file_headers(mime: str, name: str) -> dict[str, str]:
    """Headers that stop an uploaded file from ever running as a page of this origin.

    Files are whatever users uploaded, under a type they chose: ``nosniff``
    makes browsers keep that type (an HTML body stored as image/png stays a
    broken image), ``attachment`` makes anything but a raster image a
    download, and the sandboxing CSP gives a file opened anyway no script,
    no plugins and no same-origin access.
    """
    disposition = "inline" if mime in INLINE_TYPES else "attachment"
    return {
        "Content-Type": mime,
        "Content-Disposition": f"{disposition}; {disposition_filename(name)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }


def disposition_filename(name: str) -> str:
    """RFC 6266 ``filename`` (ASCII fallback) and ``filename*`` (UTF-8) parameters."""
    fallback = "".join(ch if " " <= ch < "\x7f" and ch not in '"%\\' else "_" for ch in name)
    return f"filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def admin_upsert_users(request: web.Request) -> web.Response:
    """Create or rename users. Replaced by the org directory sync (a later issue)."""
    require_admin_key(request)
    users = (await read_json_object(request)).get("users")
    if not isinstance(users, list) or not users or len(users) > 10_000:
        raise InvalidField("'users' must be a list of 1-10000 {id, name}", field="users")
    rows: list[tuple[str, str]] = []
    for i, u in enumerate(users):
        uid = u.get("id") if isinstance(u, dict) else None
        name = u.get("name", "") if isinstance(u, dict) else None
        if not is_user_id(uid) or not isinstance(name, str) or len(name) > 128:
            raise InvalidField(f"users[{i}] must be {{id, name}}", field=f"users[{i}]")
        assert isinstance(uid, str)
        rows.append((uid, name))
    store: Store = request.app[STORE]  # type: ignore[assignment]
    count = await store.upsert_users(rows, int(time.time() * 1000))
    await request.app[TRAIL].record(
        "admin-key",
        "admin.users_upsert",
        "users",
        {"count": count, "ids": [r[0] for r in rows[:100]]},
    )
    return json_response({"upserted": count})


def build_http_app(
    signer: TokenSigner, files: FileService, store: Store, metrics_: Metrics, admin_key: str
) -> web.Application:
    # client_max_size bounds non-streamed bodies (JSON); uploads stream and
    # are bounded by FileService.
    app = web.Application(
        # Outermost first: the request id is bound before any error is shaped.
        middlewares=[request_id_middleware(metrics_), errors_middleware],
        client_max_size=8 * 1024 * 1024,
    )
    app[SIGNER] = signer
    app[FILES] = files
    app[STORE] = store
    app[METRICS] = metrics_
    app[ADMIN_KEY] = admin_key
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/api/v1/files", upload_file)
    app.router.add_get("/api/v1/files/{file_id}", download_file)
    app.router.add_post("/admin/v1/users", admin_upsert_users)
    return app
