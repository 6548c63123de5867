"""The ``websockets`` server: handshake, authentication, then the request loop.

A connection's life: negotiate the codec by subprotocol → first frame must be
``auth`` within ``auth_timeout_s`` → register with the hub (presence) →
answer requests one after another until the socket closes → unregister.

Every frame from an authenticated client costs one token of its user's rate
budget *before* it is decoded, so malformed, unknown, oversized frames and
pings cannot be used to flood the server; a client that keeps sending while
refused is closed (4014). A session ends when its token does (4013) unless
the client sends a fresh ``auth`` on the open socket in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.typing import Subprotocol

from imserver.config import Config
from imserver.connection_limits import ConnectionLimiter
from imserver.errors import (
    AlreadyAuthenticated,
    ImError,
    Internal,
    NotAuthenticated,
    RateLimited,
    TokenInvalid,
)
from imserver.gateway.admission import limited_connections
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
    CLOSE_RATE_FLOOD,
    CLOSE_RESTARTING,
    CLOSE_TOKEN_EXPIRED,
    error_frame,
    pong_frame,
    result_frame,
)
from imserver.ratelimit import RateLimiter
from imserver.services.identity import IdentityService
from imserver.services.presence import PresenceService
from imserver.store.base import Store
from imserver.tokens import LEEWAY_S, TokenClaims, TokenSigner

log = logging.getLogger(__name__)

#: A client refused this many frames in a row (it ignores ``retry_after_ms``)
#: is closed with 4014 -- or twice its burst, if that is more.
FLOOD_REFUSALS = 100


def flood_refusals(burst: int) -> int:
    """Refused frames in a row after which a flooding connection is closed."""
    return max(FLOOD_REFUSALS, 2 * burst)


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
        #: Every request type this server answers, plug-ins' included (one dict lookup).
        self._parsers = dispatcher.parsers
        self._signer = signer
        self._store = store
        self._metrics = metrics
        self._server: Server | None = None
        #: One budget per user over all their devices; the composition root
        #: hands the same limiter to the HTTP user routes.
        self.limiter = RateLimiter(config.limits.user_requests_per_s, config.limits.user_burst)
        self._flood_refusals = flood_refusals(config.limits.user_burst)
        self._sweeper: asyncio.Task[None] | None = None
        #: Open sockets on the port, counted from accept (gateway/admission.py).
        self.connection_limiter = ConnectionLimiter(
            self._gw.max_connections, self._gw.max_connections_per_ip
        )
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
            # Slowloris bounds: the handshake must finish this long after the
            # TCP accept (a trickled upgrade request is aborted), and sockets
            # over the caps get 503 before their request is read.
            open_timeout=self._gw.open_timeout_s,
            create_connection=limited_connections(
                self.connection_limiter,
                lambda code: self._metrics.connections_refused.labels("ws", code).inc(),
            ),
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
            # Bounded: a handler stuck on something that never completes must
            # not keep the process (and the store's clean close) from stopping.
            grace = self._config.server.shutdown_grace_s
            try:
                async with asyncio.timeout(grace):
                    await self._server.wait_closed()
            except TimeoutError:
                log.error(
                    "websocket handlers still running %.1f s after close; stopping without them",
                    grace,
                )

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
        session.watch_expiry(claims.expires_at, claims.expires_at - claims.issued_at)
        await self._presence.connected(session)
        try:
            await self._serve(session)
        finally:
            session.stop_expiry()
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
            rid, req = rq.parse_request(frame, self._limits, self._parsers)
            if not isinstance(req, rq.Auth):
                raise NotAuthenticated("send an auth request first")
        except ImError as e:
            session.send_frame(error_frame(rid, e))
            await session.close_and_wait(CLOSE_AUTH_REQUIRED, "authenticate first")
            return None
        try:
            claims = await self._verified(req.token)
        except ImError as e:
            session.send_frame(error_frame(rid, e))
            await session.close_and_wait(CLOSE_AUTH_FAILED, e.code)
            return None
        session.send_frame(result_frame(rid, self._auth_result(claims)))
        return claims

    async def _verified(self, token: str) -> TokenClaims:
        """The token's claims if it is valid, unrevoked and its user exists."""
        claims = self._signer.verify(token)
        if not await self._store.existing_users([claims.user]):
            raise TokenInvalid("token rejected: unknown user")
        await self._identity.check(claims)
        return claims

    async def _reauthenticate(self, session: Session, req: rq.Auth) -> dict[str, Any]:
        """A fresh token on an open socket extends the session to its expiry.

        Only a token for the session's own user and device will do; any
        refusal leaves the session as it was (same identity, same expiry).
        """
        claims = await self._verified(req.token)
        if (claims.user, claims.device) != (session.user, session.device):
            raise AlreadyAuthenticated(
                f"this connection is authenticated as {session.user}/{session.device}; "
                "re-authenticate with a token for that user and device"
            )
        session.watch_expiry(claims.expires_at, claims.expires_at - claims.issued_at)
        return self._auth_result(claims)

    def _auth_result(self, claims: TokenClaims) -> dict[str, Any]:
        limits = self._limits
        return {
            "user": claims.user,
            "device": claims.device,
            "server_time": int(time.time() * 1000),
            "expires_at": claims.expires_at * 1000,
            "limits": {
                "max_frame_bytes": limits.max_frame_bytes,
                "max_text_chars": limits.max_text_chars,
                "max_group_members": limits.max_group_members,
                "max_file_bytes": limits.max_file_bytes,
                "recall_window_s": int(self._config.chat.recall_window_s),
                "idle_timeout_s": int(self._gw.idle_timeout_s),
                "sync_page_messages": limits.sync_page_messages,
                "sync_page_conversations": limits.sync_page_conversations,
                "history_page_max": limits.history_page_max,
                "requests_per_s": limits.user_requests_per_s,
                "request_burst": limits.user_burst,
                "refusals_before_close": self._flood_refusals,
                "token_leeway_s": LEEWAY_S,
            },
        }

    def _refuse(self, session: Session, raw: str | bytes, wait_s: float) -> None:
        """Answer a frame over the rate budget, or close a client that ignores it.

        The frame is decoded only to echo its ``id`` (so the client knows which
        request to retry); it is never parsed or dispatched.
        """
        self._metrics.errors.labels(RateLimited.code).inc()
        session.refused_in_row += 1
        if session.refused_in_row > self._flood_refusals:
            log.warning("closing %s/%s: flooding while rate limited", session.user, session.device)
            session.close(CLOSE_RATE_FLOOD, "rate limit ignored: slow down")
            return
        rid: rq.RequestId = None
        with contextlib.suppress(ImError):
            rid = rq.request_id(session.codec.decode(raw, self._limits.max_frame_bytes))
        err = RateLimited(
            "too many requests; slow down",
            details={"retry_after_ms": int(wait_s * 1000) + 1},
        )
        session.send_frame(error_frame(rid, err))

    async def _serve(self, session: Session) -> None:
        ws = session.ws
        codec = session.codec
        limits = self._limits
        metrics = self._metrics
        parsers = self._parsers
        try:
            async for raw in ws:
                if session.closed:
                    continue  # closing (expired, flooding, revoked): answer nothing more
                now = time.monotonic()
                session.last_activity = now
                if session.expired(time.time()):
                    session.close(CLOSE_TOKEN_EXPIRED, "token expired")
                    continue
                wait = self.limiter.take(session.user, now)
                if wait:
                    self._refuse(session, raw, wait)
                    continue
                session.refused_in_row = 0
                rid: rq.RequestId = None
                try:
                    frame = codec.decode(raw, limits.max_frame_bytes)
                    rid = rq.request_id(frame)
                    rid, req = rq.parse_request(frame, limits, parsers)
                    metrics.requests.labels(frame["type"]).inc()
                    if isinstance(req, rq.Ping):
                        session.send_frame(pong_frame(rid))
                        continue
                    if isinstance(req, rq.Auth):
                        data = await self._reauthenticate(session, req)
                    else:
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
                if type(req) is rq.Send:  # frame received -> stored -> ack written
                    metrics.observe_send_ack(time.monotonic() - now)
        except ConnectionClosed:
            pass
