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
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import WSMsgType, web

from cards.stream import StreamConnection, StreamRegistry
from cards.stream_frames import (
    MAX_FRAME_BYTES,
    error_frame,
    frame_id_of,
    hello_frame,
    parse_client_frame,
)
from imserver.errors import BadFrame, BadRequest, ImError
from imserver.http.apps_api import signed_app
from imserver.protocol.frames import CLOSE_RESTARTING

log = logging.getLogger(__name__)

STREAMS = web.AppKey("app_streams", StreamRegistry)
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
        close_socket=lambda code: ws.close(code=code, message=b"server restarting"),
    )
    await ws.send_str(hello_frame(app.app_id, HEARTBEAT_S))
    registry.add(conn)
    try:
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


def add_stream_routes(app: web.Application, registry: StreamRegistry) -> None:
    """Add the stream route to the core's HTTP app (after ``add_app_routes``)."""
    app[STREAMS] = registry
    app.router.add_get("/api/v1/stream", app_stream)
    app.on_shutdown.append(_close_streams)
