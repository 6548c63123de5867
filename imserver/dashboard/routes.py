"""The dashboard's HTTP side: pages, JSON data endpoints, the live feed (SSE), the retry button.

Pages and assets come from ``static/`` inside the package (no CDN: the
machine may be offline). Every ``/dashboard/api/`` endpoint takes the
viewer from the session cookie (``auth.viewer``) and asks
:class:`~imserver.dashboard.service.DashboardService`, which enforces the
admin scope; the feed pushes the same answers, so the page never reloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from imserver.bus.base import Bus
from imserver.bus.local import LocalBus
from imserver.dashboard.auth import (
    CODEC,
    LOGOUTS,
    check_csrf,
    login,
    logout,
    session_of,
    viewer,
)
from imserver.dashboard.live import NodeSampler
from imserver.dashboard.logouts import LoggedOutSessions, LogoutStore
from imserver.dashboard.nodes import NodeBeacon
from imserver.dashboard.service import DashboardService
from imserver.dashboard.session import Session, SessionCodec
from imserver.errors import ImError, InvalidField, NotAuthenticated
from imserver.http.admin_auth import AdminContext
from imserver.http.api import error_response, json_response

#: What the retry button does: ``(card_id, action_id, actor) -> result``; the cards
#: plug-in supplies it (the core does not import ``cards/``).
RetryCallback = Callable[[str, str, str], Awaitable[dict[str, Any]]]

SERVICE = web.AppKey("dashboard_service", DashboardService)
SAMPLER = web.AppKey("dashboard_sampler", NodeSampler)
BEACON = web.AppKey("dashboard_beacon", NodeBeacon)
RETRY: web.AppKey[RetryCallback] = web.AppKey("dashboard_retry")
STOPPING: web.AppKey[asyncio.Event] = web.AppKey("dashboard_stopping")

STATIC = Path(str(files("imserver.dashboard") / "static"))
LIVE_EVERY_S = 1.0
WORK_EVERY_S = 3.0
#: Same-origin everything; no inline script or style, no framing (a wall screen is no iframe).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name, headers={**PAGE_HEADERS, "Content-Type": "text/html"})


async def index(request: web.Request) -> web.StreamResponse:
    """The dashboard, or a redirect to the login form for a visitor without a session."""
    if await session_of(request) is None:
        raise web.HTTPFound("/dashboard/login")
    try:
        await viewer(request)
    except ImError:
        raise web.HTTPFound("/dashboard/login") from None
    return _page("index.html")


async def login_page(_request: web.Request) -> web.StreamResponse:
    return _page("login.html")


async def to_index(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/")


async def static_file(request: web.Request) -> web.StreamResponse:
    """A file of ``static/``; anything else is the JSON ``404 not_found`` of every route.

    aiohttp's own static route answers a missing file with an empty 404 of
    type ``application/octet-stream``; this one raises, so the error
    middleware shapes it like any other error. Only regular files inside
    ``static/`` are served (no symlinks out, no ``..``).
    """
    name = request.match_info["filename"]
    wanted = await asyncio.to_thread(_static_path, name)  # a stat: off the event loop
    if wanted is None:
        raise web.HTTPNotFound(reason=f"no dashboard file {name!r}")
    return web.FileResponse(wanted, headers={"X-Content-Type-Options": "nosniff"})


def _static_path(name: str) -> Path | None:
    """``static/<name>`` resolved, if it is a regular file inside ``static/``."""
    root = STATIC.resolve()
    wanted = (root / name).resolve()
    return wanted if wanted.is_relative_to(root) and wanted.is_file() else None


def _unit_param(request: web.Request) -> str | None:
    unit = request.query.get("unit") or None
    if unit is not None and len(unit) > 128:
        raise InvalidField("'unit' must be a unit id", field="unit")
    return unit


async def session_info(request: web.Request) -> web.Response:
    ctx, s = await viewer(request)
    return json_response(
        {
            "super": ctx.super,
            "user": ctx.user,
            "scopes": [{"id": u.id, "name": u.name, "path": u.path} for u in ctx.scopes],
            "csrf": request.app[CODEC].csrf_token(s),
            "node": request.app[SAMPLER].node,
            "expires_at": s.expires_at,
        },
        headers={"Cache-Control": "no-store"},
    )


async def units(request: web.Request) -> web.Response:
    ctx, _ = await viewer(request)
    return json_response(await request.app[SERVICE].units(ctx, _unit_param(request)))


async def callbacks(request: web.Request) -> web.Response:
    ctx, _ = await viewer(request)
    return json_response(await request.app[SERVICE].callbacks(ctx))


async def overview(request: web.Request) -> web.Response:
    ctx, _ = await viewer(request)
    return json_response(await request.app[SERVICE].overview(ctx))


def _live(app: web.Application, ctx: AdminContext) -> dict[str, Any]:
    """This node's numbers; for the operator also every live node's and the cluster totals."""
    sampler = app[SAMPLER]
    snapshot = sampler.snapshot()
    if ctx.super:
        snapshot.update(app[BEACON].view(sampler.node))
    return snapshot


async def live(request: web.Request) -> web.Response:
    ctx, _ = await viewer(request)
    return json_response(_live(request.app, ctx))


async def retry(request: web.Request) -> web.Response:
    """The retry button: the admin retry of a failed callback, for the operator's key."""
    ctx, s = await viewer(request)
    check_csrf(request, s)
    ctx.require_super()
    hook = request.app.get(RETRY)
    if hook is None:
        raise InvalidField("callback retry is not available on this server", field="card_id")
    return json_response(
        await hook(request.match_info["card_id"], request.match_info["action_id"], "admin-key")
    )


async def _work(app: web.Application, ctx: AdminContext, unit: str | None) -> dict[str, Any]:
    service = app[SERVICE]
    work: dict[str, Any] = {
        "units": await service.units(ctx, unit),
        "overview": await service.overview(ctx),
    }
    if ctx.super:
        work["callbacks"] = await service.callbacks(ctx)
    return work


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _viewer_again(request: web.Request, s: Session) -> AdminContext:
    """The stream's viewer now, or ``ImError``: logged out (on any node), revoked, no grant."""
    if await request.app[LOGOUTS].is_logged_out(s.sid):
        raise NotAuthenticated("the dashboard session ended; log in again")
    ctx, _ = await viewer(request)
    return ctx


async def _sleep(timeout_s: float, *events: asyncio.Event) -> None:
    """Up to ``timeout_s``, less if one of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``live`` every second, ``work`` every few seconds, for one unit.

    Every tick asks whether the session was logged out (memory; see
    ``logouts.py``); the whole viewer is checked again before each ``work``
    push and at once when a logout or revocation event names this session or
    its user. Any of them ends the stream with an ``error`` event
    (``not_authenticated``, ``token_revoked``, ``forbidden``).
    """
    ctx, s = await viewer(request)
    unit = _unit_param(request)
    app = request.app
    first = await _work(app, ctx, unit)  # a bad or foreign unit fails here, as plain JSON
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    await resp.write(b"retry: 2000\n\n" + _event("work", first))
    stopping = app[STOPPING]
    ticks, per_work = 0, max(1, round(WORK_EVERY_S / LIVE_EVERY_S))
    with app[LOGOUTS].watch(s) as poked:
        try:
            while not stopping.is_set():
                due = ticks > 0 and ticks % per_work == 0
                try:
                    if due or poked.is_set():
                        poked.clear()
                        ctx = await _viewer_again(request, s)
                    elif await app[LOGOUTS].is_logged_out(s.sid):
                        raise NotAuthenticated("the dashboard session ended; log in again")
                    await resp.write(_event("live", _live(app, ctx)))
                    if due:
                        await resp.write(_event("work", await _work(app, ctx, unit)))
                except ImError as e:
                    body = orjson.loads(error_response(e).body)  # type: ignore[arg-type]
                    await resp.write(_event("error", body))
                    break
                ticks += 1
                await _sleep(LIVE_EVERY_S, stopping, poked)
        except ConnectionError:
            pass  # the viewer closed the page or navigated away: nothing left to tell
    return resp


async def _stopping(app: web.Application) -> None:
    app[STOPPING].set()


def add_dashboard_routes(
    app: web.Application,
    service: DashboardService,
    sampler: NodeSampler,
    codec: SessionCodec,
    retry_callback: RetryCallback | None = None,
    bus: Bus | None = None,
    *,
    logout_store: LogoutStore,
) -> None:
    """Serve the dashboard under ``/dashboard/``; sample this node and trade summaries on ``bus``.

    Without a bus the node table holds this node only. ``logout_store`` (the
    server's store) records logouts for every node, also one that missed the
    bus event.
    """
    bus = bus if bus is not None else LocalBus()
    beacon = NodeBeacon(bus, sampler.snapshot)
    logouts = LoggedOutSessions(logout_store, bus)
    app[SERVICE] = service
    app[SAMPLER] = sampler
    app[BEACON] = beacon
    app[CODEC] = codec
    app[LOGOUTS] = logouts
    app[STOPPING] = asyncio.Event()
    if retry_callback is not None:
        app[RETRY] = retry_callback

    async def sampling(a: web.Application) -> AsyncIterator[None]:
        async for _ in sampler.lifetime(a):
            logouts.start()
            await beacon.start()
            try:
                yield
            finally:
                await beacon.stop()

    app.cleanup_ctx.append(sampling)
    app.on_shutdown.append(_stopping)
    r = app.router
    r.add_get("/dashboard", to_index)
    r.add_get("/dashboard/", index)
    r.add_get("/dashboard/login", login_page)
    r.add_post("/dashboard/login", login)
    r.add_post("/dashboard/logout", logout)
    r.add_get("/dashboard/api/session", session_info)
    r.add_get("/dashboard/api/units", units)
    r.add_get("/dashboard/api/callbacks", callbacks)
    r.add_get("/dashboard/api/overview", overview)
    r.add_get("/dashboard/api/live", live)
    r.add_get("/dashboard/api/stream", stream)
    r.add_post("/dashboard/api/callbacks/{card_id}/{action_id}/retry", retry)
    r.add_get("/dashboard/static/{filename:.+}", static_file)
