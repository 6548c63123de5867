"""``GET /api/v1/stream``: an app's outbound WebSocket for its callbacks (stream mode).

The handshake is a signed app request like any other (``signed_app``: HMAC
over timestamp, nonce and the empty body; the app's request budget), checked
*before* the upgrade, so a bad or expired signature is the usual ``401`` JSON
error with its stable code and no socket is opened. After the upgrade the
server sends ``hello``, then ``callback`` frames; the app answers each with
``ack`` or ``nack`` (``cards.stream_frames``). A bad frame gets an ``error``
frame and changes nothing; the connection stays. A frame over the size limit
closes the socket with 1009; server pings (``heartbeat_s``) that go unanswered
close it too. Either way the deliveries it had not acked are retried.

Revocation: each stream remembers which secret signed its handshake
(``signed_with``); the core announces app changes (``TOPIC_APP_CHANGED`` on
the bus, and at once on the node that made the change) and
``StreamRevocation`` closes what they revoke: 4401 for a deleted app, 4402
for a retired secret (docs/cards.md "Stream mode").
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Final

from aiohttp import WSMsgType, web

from cards.stream import StreamConnection, StreamRegistry, StreamRevocation, secret_tag
from cards.stream_frames import (
    MAX_FRAME_BYTES,
    error_frame,
    frame_id_of,
    hello_frame,
    parse_client_frame,
)
from imserver.appauth import H_NONCE, H_SIGNATURE, H_TIMESTAMP, signature
from imserver.bus.base import TOPIC_APP_CHANGED, Bus
from imserver.errors import BadFrame, BadRequest, ImError
from imserver.http.apps_api import APP_CHANGE_LISTENERS, APP_STORE, SIGNING_CLOCK, signed_app
from imserver.protocol.frames import CLOSE_RESTARTING
from imserver.store.records import AppRecord

log = logging.getLogger(__name__)

STREAMS = web.AppKey("app_streams", StreamRegistry)
REVOCATION = web.AppKey("app_stream_revocation", StreamRevocation)
#: Server pings this often; no pong within half of it closes the socket.
HEARTBEAT_S: Final = 20.0


async def app_stream(request: web.Request) -> web.StreamResponse:
    """Authenticate the app, upgrade, register the stream, read its answers until it ends."""
    app, _ = await signed_app(request)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
    if not ws.can_prepare(request).ok:
        raise BadRequest(
            "GET /api/v1/stream must be a WebSocket upgrade (Connection: Upgrade,"
            " Upgrade: websocket)"
        )
    await ws.prepare(request)
    registry = request.app[STREAMS]
    conn = StreamConnection(
        app.app_id,
        ws.send_str,
        request.remote or "?",
        close_socket=lambda code, reason: ws.close(code=code, message=reason.encode()),
        signed_with=_signed_with(request, app),
    )
    await ws.send_str(hello_frame(app.app_id, HEARTBEAT_S))
    registry.add(conn)
    try:
        # Deleted or rotated while this handshake was verified? Then closed at once;
        # on the overlap's old secret, a timer closes it when the overlap ends.
        request.app[REVOCATION].check_soon(app.app_id)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _answer(ws, conn, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_str(error_frame(BadFrame("frames must be JSON text, not binary")))
            elif msg.type == WSMsgType.ERROR:
                log.info("app %s stream error: %s", app.app_id, ws.exception())
    finally:
        registry.remove(conn)  # fails what it had not acked: retried, maybe elsewhere
    return ws


def _signed_with(request: web.Request, app: AppRecord) -> str:
    """The tag of the secret (current, or the overlap's previous one) that signed the handshake.

    ``signed_app`` has verified the signature with one of them; which one is
    worked out here again rather than changing what every signed route gets.
    """
    h = request.headers
    sig = h.get(H_SIGNATURE, "").lower()
    for secret in (app.secret, app.previous_secret):
        expected = signature(secret, h.get(H_TIMESTAMP, ""), h.get(H_NONCE, ""), b"")
        if secret and hmac.compare_digest(sig, expected):
            return secret_tag(secret)
    return secret_tag(app.secret)  # not reached: the signature verified with one of them


async def _answer(ws: web.WebSocketResponse, conn: StreamConnection, text: str) -> None:
    """Settle the delivery an ack/nack names, or tell the app why the frame is refused."""
    try:
        conn.answer(parse_client_frame(text))
    except ImError as e:
        await ws.send_str(error_frame(e, frame_id_of(text)))


async def _close_streams(app: web.Application) -> None:
    """On shutdown: close every stream with 1012 so apps reconnect (to another node)."""
    for conn in app[STREAMS].all():
        await conn.shutdown(CLOSE_RESTARTING)


async def _stop_revocation(app: web.Application) -> None:
    await app[REVOCATION].stop()


def add_stream_routes(app: web.Application, registry: StreamRegistry, bus: Bus) -> None:
    """Add the stream route to the core's HTTP app (after ``add_app_routes``).

    App changes close what they revoke: heard on the bus from every node, and
    on this node at once through the core's ``APP_CHANGE_LISTENERS``.
    """
    revocation = StreamRevocation(
        registry,
        app[APP_STORE].get_app,
        clock=lambda: app.get(SIGNING_CLOCK, time.time)(),  # the clock overlaps end by
    )
    app[STREAMS] = registry
    app[REVOCATION] = revocation
    app[APP_CHANGE_LISTENERS].append(revocation.on_app_changed)
    bus.subscribe(TOPIC_APP_CHANGED, revocation.on_app_changed)
    app.router.add_get("/api/v1/stream", app_stream)
    app.on_shutdown.append(_stop_revocation)
    app.on_shutdown.append(_close_streams)
