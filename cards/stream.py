"""Stream mode's transport: this node's live app streams, send and await the ack.

An app that cannot take inbound HTTP (an OA system inside an intranet) holds
one or more outbound WebSockets to the server (``cards.stream_routes``). The
callback dispatcher asks :meth:`StreamRegistry.pick` for one of the app's
streams on this node (round robin, so several connections share the load)
and, when there is one, delivers the outbox item over it instead of POSTing:
the ack counts as the 2xx (its ``card_update`` is applied the same way), a
nack, a timeout or a dropped connection as a failed attempt, retried with the
usual backoff — to whichever stream of the app is live then.

A stream-only app (empty ``callback_url``) with no stream on this node gets
:data:`NO_STREAM`: the dispatcher puts the item back with :func:`park_ms` and
does not count an attempt, since another node may hold the app's stream
(outbox claims are cluster-wide; docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from cards.stream_frames import Ack, Nack, UnknownDelivery, callback_frame
from imserver.appauth import sign_headers
from imserver.metrics import Metrics
from imserver.store.records import AppRecord, OutboxItem

log = logging.getLogger(__name__)

#: The outcome for a stream-only app with no stream here: not an attempt.
NO_STREAM: Final = "no stream connection of the app on this node"
#: A parked item comes due again after 0.5-1 s: soon enough for the node that
#: holds the stream to claim it, rare enough to cost little.
PARK_S: Final = 1.0
CLOSED: Final = "stream connection closed before the ack"

Answer = tuple[str, dict[str, Any] | None]


def park_ms(rng: random.Random) -> int:
    """How long an item of a stream-only app waits when no stream is here (jittered)."""
    return int(1000 * rng.uniform(PARK_S / 2, PARK_S))


class StreamConnection:
    """One app's live WebSocket: deliveries sent on it and not yet answered.

    ``send`` writes one text frame (the aiohttp response's ``send_str``). The
    route handler feeds the app's answers to :meth:`answer` and calls
    :meth:`close` when the socket ends, which fails every waiting delivery.
    """

    def __init__(
        self,
        app_id: str,
        send: Callable[[str], Awaitable[None]],
        peer: str,
        close_socket: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        self.app_id = app_id
        self.peer = peer
        self._send = send
        self._close_socket = close_socket
        self._send_lock = asyncio.Lock()  # deliveries from concurrent tasks, one frame at a time
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self.closed = False

    @property
    def unacked(self) -> int:
        return len(self._waiting)

    async def deliver(
        self, app: AppRecord, item: OutboxItem, now: float, ack_timeout_s: float
    ) -> tuple[str, Answer]:
        """Send ``item`` signed as the HTTP callback is: (metric label, answer).

        The answer is ``('', ack's answer)`` on an ack, else ``(reason, None)``.
        """
        body = orjson.dumps(item.payload)
        headers = sign_headers(app.app_id, app.secret, body, now=now)
        headers["X-Imserver-Action-Id"] = item.action_id
        delivery_id = secrets.token_hex(8)
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[delivery_id] = waiter
        frame = callback_frame(delivery_id, item.action_id, headers, body)
        try:
            if self.closed:
                return "closed", (CLOSED, None)
            # One deadline for writing and answering: an app that stops reading
            # (its socket's buffer full) times out like one that stops answering.
            async with asyncio.timeout(ack_timeout_s):
                try:
                    async with self._send_lock:
                        await self._send(frame)
                except (ConnectionError, RuntimeError) as e:  # aiohttp: closing/closed socket
                    return "closed", (f"stream send failed: {type(e).__name__}: {e}"[:300], None)
                answer = await waiter
        except TimeoutError:
            return "timeout", (f"no stream ack within {ack_timeout_s:g} s", None)
        finally:
            self._waiting.pop(delivery_id, None)
        label = "acked" if answer[0] == "" else "closed" if answer[0] == CLOSED else "nacked"
        return label, answer

    def answer(self, frame: Ack | Nack) -> None:
        """Settle the delivery the frame names, or raise ``unknown_delivery`` (nothing changes)."""
        waiter = self._waiting.pop(frame.id, None)
        if waiter is None or waiter.done():
            raise UnknownDelivery(
                f"no delivery {frame.id[:64]!r} is waiting for an answer on this connection"
                " (already answered, timed out, or never sent)",
                field="id",
            )
        if isinstance(frame, Ack):
            answer = {"card_update": frame.card_update} if frame.card_update is not None else None
            waiter.set_result(("", answer))
        else:
            waiter.set_result((f"nack: {frame.error}" if frame.error else "nack", None))

    async def shutdown(self, code: int) -> None:
        """Close the socket itself with ``code`` (server stopping); the handler then ends."""
        self.close()
        if self._close_socket is not None:
            await self._close_socket(code)

    def close(self) -> None:
        """The socket ended: every delivery still waiting fails now (and is retried)."""
        self.closed = True
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result((CLOSED, None))
        self._waiting.clear()


class StreamRegistry:
    """Which apps hold streams on this node; hands out one per delivery, round robin."""

    def __init__(self, metrics: Metrics, on_connect: Callable[[], None] = lambda: None) -> None:
        self._metrics = metrics
        self._by_app: dict[str, list[StreamConnection]] = {}
        self._turn: dict[str, int] = {}
        #: Called when a stream registers: items parked for its app may go now.
        self.on_connect = on_connect

    def add(self, conn: StreamConnection) -> None:
        self._by_app.setdefault(conn.app_id, []).append(conn)
        self._metrics.app_streams.inc()
        log.info("app %s stream connected from %s", conn.app_id, conn.peer)
        self.on_connect()

    def remove(self, conn: StreamConnection) -> None:
        conns = self._by_app.get(conn.app_id, [])
        if conn in conns:
            conns.remove(conn)
            self._metrics.app_streams.dec()
            log.info("app %s stream from %s closed", conn.app_id, conn.peer)
        if not conns:
            self._by_app.pop(conn.app_id, None)
            self._turn.pop(conn.app_id, None)
        conn.close()

    def pick(self, app_id: str) -> StreamConnection | None:
        """The app's next live stream on this node, or None (then HTTP, or park)."""
        conns = [c for c in self._by_app.get(app_id, ()) if not c.closed]
        if not conns:
            return None
        turn = self._turn.get(app_id, 0)
        self._turn[app_id] = turn + 1
        return conns[turn % len(conns)]

    async def deliver(
        self, app: AppRecord, item: OutboxItem, now: float, ack_timeout_s: float
    ) -> Answer | None:
        """Deliver over one of the app's streams here; None when it has none on this node."""
        conn = self.pick(app.app_id)
        if conn is None:
            return None
        label, answer = await conn.deliver(app, item, now, ack_timeout_s)
        self._metrics.stream_deliveries.labels(label).inc()
        return answer

    def count(self, app_id: str | None = None) -> int:
        if app_id is not None:
            return len(self._by_app.get(app_id, ()))
        return sum(len(c) for c in self._by_app.values())

    def all(self) -> list[StreamConnection]:
        return [c for conns in self._by_app.values() for c in conns]
