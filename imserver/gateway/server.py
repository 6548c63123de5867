"""The ``websockets`` server: handshake, authentication, then the request loop.

A connection's life: negotiate the codec by subprotocol → first frame must be
``auth`` within ``auth_timeout_s`` → register with the hub (presence) →
answer requests one after another until the socket closes → unregister.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.typing import Subprotocol

from imserver.config import Config
from imserver.errors import ImError, Internal, NotAuthenticated, RateLimited, TokenInvalid
from imserver.gateway.dispatch import Dispatcher
from imserver.gateway.session import Session
from imserver.hub import Hub
from imserver.metrics import Metrics
from imserver.protocol import requests as rq
from imserver.protocol.codec import SUBPROTOCOLS, codec_for
from imserver.protocol.frames import (
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_REQUIRED,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_RESTARTING,
    error_frame,
    pong_frame,
    result_frame,
)
from imserver.ratelimit import RateLimiter
from imserver.services.identity import IdentityService
from imserver.services.presence import PresenceService
from imserver.store.base import Store
from imserver.tokens import TokenClaims, TokenSigner

log = logging.getLogger(__name__)


def select_subprotocol(
    _conn: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """The client's first supported offer; none offered means JSON."""
    if not offered:
        return None
    for proto in offered:
        if proto in SUBPROTOCOLS:
            return proto
    raise NegotiationError(f"unsupported subprotocol; supported: {', '.join(SUBPROTOCOLS)}")


class Gateway:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        presence: PresenceService,
        dispatcher: Dispatcher,
        signer: TokenSigner,
        store: Store,
        metrics: Metrics,
        identity: IdentityService,
    ) -> None:
        self._identity = identity
        self._config = config
        self._limits = config.limits
        self._gw = config.gateway
        self._hub = hub
        self._presence = presence
        self._dispatcher = dispatcher
        self._signer = signer
        self._store = store
        self._metrics = metrics
        self._server: Server | None = None
        self._limiter = RateLimiter(config.limits.user_requests_per_s, config.limits.user_burst)
        self._sweeper: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self._config.server.host,
            self._config.server.ws_port,
            select_subprotocol=select_subprotocol,
            subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
            compression="deflate" if self._gw.compression else None,
            ping_interval=self._gw.ping_interval_s,
            ping_timeout=self._gw.ping_timeout_s,
            close_timeout=5,
            # Oversized frames up to 4x the limit get a polite error frame;
            # beyond that the WebSocket layer closes with 1009.
            max_size=self._limits.max_frame_bytes * 4,
            max_queue=64,
            # asyncio's default backlog (100) overflows when thousands of
            # clients reconnect at once after a restart; SYN retries then cost
            # seconds. The kernel caps it at net.core.somaxconn.
            backlog=self._gw.listen_backlog,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def stop(self) -> None:
        """Close every socket with 1012 so clients reconnect, then stop listening."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self._hub.close_all(CLOSE_RESTARTING, "server restarting")
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()

    async def _sweep_idle(self) -> None:
        interval = min(5.0, self._gw.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            self._hub.close_idle(self._gw.idle_timeout_s)

    # -- one connection ------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(
            ws, codec_for(ws.subprotocol), self._gw.send_buffer_limit_bytes, self._metrics
        )
        claims = await self._authenticate(session)
        if claims is None:
            return
        session.user, session.device = claims.user, claims.device
        await self._presence.connected(session)
        try:
            await self._serve(session)
        finally:
            await self._presence.disconnected(session)

    async def _authenticate(self, session: Session) -> TokenClaims | None:
        ws = session.ws
        try:
            raw = await asyncio.wait_for(ws.recv(), self._config.auth.auth_timeout_s)
        except TimeoutError:
            await session.close_and_wait(CLOSE_AUTH_TIMEOUT, "authentication timeout")
            return None
        except ConnectionClosed:
            return None
        rid: rq.RequestId = None
        try:
            frame = session.codec.decode(raw, self._limits.max_frame_bytes)
            rid = rq.request_id(frame)
            rid, req = rq.parse_request(frame, self._limits)
            if not isinstance(req, rq.Auth):
                raise NotAuthenticated("send an auth request first")
        except ImError as e:
            session.send_frame(error_frame(rid, e))
            await session.close_and_wait(CLOSE_AUTH_REQUIRED, "authenticate first")
            return None
        try:
            claims = self._signer.verify(req.token)
            if not await self._store.existing_users([claims.user]):
                raise TokenInvalid("token rejected: unknown user")
            await self._identity.check(claims)
        except ImError as e:
            session.send_frame(error_frame(rid, e))
            await session.close_and_wait(CLOSE_AUTH_FAILED, e.code)
            return None
        session.send_frame(
            result_frame(
                rid,
                {
                    "user": claims.user,
                    "device": claims.device,
                    "server_time": int(time.time() * 1000),
                    "expires_at": claims.expires_at * 1000,
                    "limits": {
                        "max_frame_bytes": self._limits.max_frame_bytes,
                        "max_text_chars": self._limits.max_text_chars,
                        "max_group_members": self._limits.max_group_members,
                        "max_file_bytes": self._limits.max_file_bytes,
                        "recall_window_s": int(self._config.chat.recall_window_s),
                        "idle_timeout_s": int(self._gw.idle_timeout_s),
                        "sync_page_messages": self._limits.sync_page_messages,
                        "sync_page_conversations": self._limits.sync_page_conversations,
                        "history_page_max": self._limits.history_page_max,
                    },
                },
            )
        )
        return claims

    async def _serve(self, session: Session) -> None:
        ws = session.ws
        codec = session.codec
        limits = self._limits
        metrics = self._metrics
        try:
            async for raw in ws:
                session.last_activity = time.monotonic()
                rid: rq.RequestId = None
                try:
                    frame = codec.decode(raw, limits.max_frame_bytes)
                    rid = rq.request_id(frame)
                    rid, req = rq.parse_request(frame, limits)
                    metrics.requests.labels(frame["type"]).inc()
                    wait = self._limiter.take(session.user, time.monotonic())
                    if wait:
                        raise RateLimited(
                            "too many requests; slow down",
                            details={"retry_after_ms": int(wait * 1000) + 1},
                        )
                    if isinstance(req, rq.Ping):
                        session.send_frame(pong_frame(rid))
                        continue
                    data = await self._dispatcher.handle(session, req)
                except ImError as e:
                    metrics.errors.labels(e.code).inc()
                    session.send_frame(error_frame(rid, e))
                    continue
                except Exception:
                    log.exception("request failed for %s/%s", session.user, session.device)
                    metrics.errors.labels("internal").inc()
                    session.send_frame(error_frame(rid, Internal("internal server error")))
                    continue
                session.send_frame(result_frame(rid, data))
        except ConnectionClosed:
            pass
