"""One authenticated WebSocket connection as the hub and services see it.

Writes never wait. ``write`` hands bytes straight to the websockets protocol
and transport; if the transport's unsent buffer has passed the bound, the
socket is closed with 4008 instead, so one slow reader can neither stall
fan-out to the others nor grow the server's memory without limit.

A session lives no longer than its token: one timer per session (``call_at``,
not a task, so 10k sessions cost 10k timer handles) first sends
``auth.expiring`` and then, unless a re-``auth`` re-armed it, closes the socket
with 4013 at ``expires_at + LEEWAY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from imserver.metrics import Metrics
from imserver.protocol.codec import Codec
from imserver.protocol.frames import (
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_REQUIRED,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_IDLE_TIMEOUT,
    CLOSE_RATE_FLOOD,
    CLOSE_REPLACED,
    CLOSE_RESTARTING,
    CLOSE_REVOKED,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    auth_expiring_frame,
)
from imserver.tokens import LEEWAY_S, expiry_warning_lead_s

log = logging.getLogger(__name__)

CLOSE_NAMES = {
    CLOSE_AUTH_TIMEOUT: "auth_timeout",
    CLOSE_AUTH_FAILED: "auth_failed",
    CLOSE_AUTH_REQUIRED: "auth_required",
    CLOSE_SLOW_CONSUMER: "slow_consumer",
    CLOSE_REPLACED: "replaced",
    CLOSE_IDLE_TIMEOUT: "idle_timeout",
    CLOSE_RESTARTING: "restarting",
    CLOSE_REVOKED: "revoked",
    CLOSE_TOKEN_EXPIRED: "token_expired",
    CLOSE_RATE_FLOOD: "rate_flood",
}


class Session:
    __slots__ = (
        "_buffer_limit",
        "_close_task",
        "_expiry_timer",
        "_metrics",
        "_protocol",
        "_transport",
        "closed",
        "codec",
        "device",
        "expires_at",
        "last_activity",
        "refused_in_row",
        "user",
        "watching",
        "ws",
    )

    def __init__(
        self, ws: ServerConnection, codec: Codec, buffer_limit: int, metrics: Metrics
    ) -> None:
        self.ws = ws
        self.codec = codec
        self.user = ""
        self.device = ""
        self.last_activity = time.monotonic()
        self.watching: set[str] = set()
        self.closed = False
        self._transport = ws.transport
        self._protocol = ws.protocol
        self._buffer_limit = buffer_limit
        self._metrics = metrics
        self._close_task: asyncio.Task[None] | None = None
        #: The token's ``exp`` (wall clock, s); ``inf`` until authenticated.
        self.expires_at = float("inf")
        self._expiry_timer: asyncio.TimerHandle | None = None
        #: Frames refused by the rate limiter since the last one let through.
        self.refused_in_row = 0

    def send_frame(self, frame: dict[str, Any]) -> bool:
        return self.write(self.codec.encode(frame))

    def _writable(self) -> bool:
        """Open, and not over the send-buffer bound (else closed as a slow consumer)."""
        if self.closed or self._protocol.state is not State.OPEN:
            return False
        unsent = self._transport.get_write_buffer_size()
        if unsent > self._buffer_limit:
            log.warning(
                "closing slow consumer %s/%s: %d bytes unsent", self.user, self.device, unsent
            )
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and sync")
            return False
        return True

    def write(self, data: bytes) -> bool:
        if not self._writable():
            return False
        protocol = self.ws.protocol
        if self.codec.text:
            protocol.send_text(data)
        else:
            protocol.send_binary(data)
        self.ws.send_data()
        return True

    def write_frame(self, frame: bytes) -> bool:
        """Write an already serialised WebSocket frame straight to the transport.

        The fan-out fast path: the hub builds one frame per codec and every
        socket gets the same bytes, with no per-socket framing. Safe because
        the server never fragments messages or compresses (``compression`` is
        off whenever the hub uses this), so websockets keeps no per-message
        sending state that these writes could disturb.
        """
        # _writable() inlined: this runs once per socket per fan-out, and a
        # Python call costs about as much as the checks themselves.
        if self.closed or self._protocol.state is not State.OPEN:
            return False
        transport = self._transport
        if transport.get_write_buffer_size() > self._buffer_limit:
            return self._writable()  # over the bound: closes it as a slow consumer
        transport.write(frame)
        return True

    # -- token expiry ----------------------------------------------------------
    def watch_expiry(self, expires_at: float, lifetime_s: float) -> None:
        """(Re)arm the session's one expiry timer for a token valid until ``expires_at``.

        Called on ``auth`` and again on every successful re-``auth``: the
        fresh token's expiry replaces the old one.
        """
        self.stop_expiry()
        self.expires_at = expires_at
        self._arm(expires_at - expiry_warning_lead_s(lifetime_s), self._warn_expiring)

    def expired(self, now: float) -> bool:
        """True once the token is past ``expires_at + LEEWAY_S`` (wall clock ``now``)."""
        return now > self.expires_at + LEEWAY_S

    def stop_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None

    def _arm(self, wall_at: float, callback: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, wall_at - time.time())
        self._expiry_timer = loop.call_at(loop.time() + delay, callback)

    def _warn_expiring(self) -> None:
        self.send_frame(auth_expiring_frame(int(self.expires_at * 1000)))
        if not self.closed:  # the write may have closed it (slow consumer)
            self._arm(self.expires_at + LEEWAY_S, self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        self.close(CLOSE_TOKEN_EXPIRED, "token expired: re-authenticate before expires_at")

    def close(self, code: int, reason: str) -> None:
        """Start closing with ``code``; no more writes reach this socket.

        Does not wait: the hub calls it in the middle of a fan-out.
        """
        if self.closed:
            return
        self.closed = True
        self.stop_expiry()
        self._metrics.closes.labels(CLOSE_NAMES.get(code, str(code))).inc()
        self._close_task = asyncio.get_running_loop().create_task(self.ws.close(code, reason))

    async def close_and_wait(self, code: int, reason: str) -> None:
        """Close and wait for the closing handshake (or its timeout)."""
        self.close(code, reason)
        if self._close_task is not None:
            await asyncio.shield(self._close_task)


def server_frame(data: bytes, text: bool) -> bytes:
    """One unmasked server-to-client WebSocket data frame (RFC 6455) for ``data``."""
    return Frame(Opcode.TEXT if text else Opcode.BINARY, data).serialize(mask=False)
