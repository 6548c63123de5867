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

Revocation reaches live streams too (:class:`StreamRevocation`): each stream
remembers which of the app's secrets signed its handshake, and when the app
is deleted, or that secret stops verifying (a rotation's overlap ended), the
stream is closed with :data:`CLOSE_APP_DELETED` or :data:`CLOSE_SECRET_RETIRED`
on every node, within a second or so of the change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
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
#: WebSocket close codes of a revoked stream (docs/cards.md "Stream mode"): the
#: app was deleted (do not reconnect), or the secret that signed the handshake
#: no longer verifies (reconnect signed with the current one).
CLOSE_APP_DELETED: Final = 4401
CLOSE_SECRET_RETIRED: Final = 4402
#: Checked again this long after an overlap's end, so the old secret has surely expired.
RECHECK_MARGIN_S: Final = 0.05

Answer = tuple[str, dict[str, Any] | None]


def park_ms(rng: random.Random) -> int:
    """How long an item of a stream-only app waits when no stream is here (jittered)."""
    return int(1000 * rng.uniform(PARK_S / 2, PARK_S))


def secret_tag(secret: str) -> str:
    """Which secret signed a handshake, without keeping a copy of it on the connection."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class StreamConnection:
    """One app's live WebSocket: deliveries sent on it and not yet answered.

    ``send`` writes one text frame (the aiohttp response's ``send_str``). The
    route handler feeds the app's answers to :meth:`answer` and calls
    :meth:`close` when the socket ends, which fails every waiting delivery.
    ``signed_with`` is the :func:`secret_tag` of the secret that verified the
    handshake: the stream lives only as long as that secret does.
    """

    def __init__(
        self,
        app_id: str,
        send: Callable[[str], Awaitable[None]],
        peer: str,
        close_socket: Callable[[int, str], Awaitable[object]] | None = None,
        signed_with: str = "",
    ) -> None:
        self.app_id = app_id
        self.peer = peer
        self.signed_with = signed_with
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

    async def shutdown(self, code: int, reason: str = "server restarting") -> None:
        """Close the socket itself with ``code`` (server stopping, app revoked); the handler
        then ends. What was waiting for an ack fails at once, as on a dropped connection."""
        self.close()
        if self._close_socket is not None:
            await self._close_socket(code, reason)

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

    def of(self, app_id: str) -> list[StreamConnection]:
        """The app's streams on this node that are still open."""
        return [c for c in self._by_app.get(app_id, ()) if not c.closed]


class StreamRevocation:
    """Closes this node's streams of an app whose credentials no longer hold.

    Told "app X changed" (the core's ``TOPIC_APP_CHANGED``, from any node, and
    at once on the node that made the change; and by the route after each
    handshake, which closes the race with a change made while it was being
    verified), it reads the app from the store, so a repeated or late notice
    does no harm: no app, every stream closes with :data:`CLOSE_APP_DELETED`;
    a stream whose secret is no longer among the valid ones closes with
    :data:`CLOSE_SECRET_RETIRED`; a stream on a secret still in its overlap
    gets a timer for the overlap's end. ``clock`` is the one signatures are
    checked with (Unix seconds), so an overlap ends here when it does there.
    """

    def __init__(
        self,
        registry: StreamRegistry,
        get_app: Callable[[str], Awaitable[AppRecord | None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._get_app = get_app
        self._clock = clock
        self._queued: set[str] = set()  # a check is spawned and has not read the store yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._stopped = False

    def on_app_changed(self, payload: dict[str, Any]) -> None:
        """Bus handler (synchronous): check the app's streams here, soon."""
        app_id = payload.get("app_id")
        if isinstance(app_id, str):
            self.check_soon(app_id)

    def check_soon(self, app_id: str) -> None:
        """Check the app's streams here in a task of its own (errors: logged, checked again)."""
        if self._stopped or app_id in self._queued:
            return  # a check that has not read the store yet will see this change too
        if not self._registry.of(app_id):
            return  # nothing to close here; a handshake in progress checks for itself
        self._queued.add(app_id)
        task = asyncio.get_running_loop().create_task(self.check(app_id))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._checked(app_id, t))

    async def check(self, app_id: str) -> None:
        """Close the app's streams whose credentials are gone; time the end of an overlap."""
        self._queued.discard(app_id)
        app = await self._get_app(app_id)
        conns = self._registry.of(app_id)
        if app is None:
            await self._close(conns, CLOSE_APP_DELETED, "app deleted")
            return
        now_ms = int(self._clock() * 1000)
        valid = {secret_tag(s) for s in app.secrets_valid_at(now_ms)}
        await self._close(
            [c for c in conns if c.signed_with not in valid],
            CLOSE_SECRET_RETIRED,
            "secret retired: reconnect signed with the current secret",
        )
        old = secret_tag(app.previous_secret) if len(valid) > 1 else None
        if old is not None and any(c.signed_with == old for c in conns):
            self._recheck_at(app_id, app.previous_secret_until / 1000 - now_ms / 1000)

    def _checked(self, app_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # The store did not answer: the streams stay open only until it does.
        log.error(
            "checking the streams of app %s failed; again in 1 s", app_id, exc_info=task.exception()
        )
        self._recheck_at(app_id, 1.0)

    def _recheck_at(self, app_id: str, delay_s: float) -> None:
        if self._stopped:
            return
        timer = self._timers.pop(app_id, None)
        if timer is not None:
            timer.cancel()
        self._timers[app_id] = asyncio.get_running_loop().call_later(
            max(0.0, delay_s) + RECHECK_MARGIN_S, self._recheck, app_id
        )

    def _recheck(self, app_id: str) -> None:
        self._timers.pop(app_id, None)
        self.check_soon(app_id)

    async def _close(self, conns: list[StreamConnection], code: int, reason: str) -> None:
        if not conns:
            return
        log.warning(
            "closing %d stream(s) of app %s with %d: %s", len(conns), conns[0].app_id, code, reason
        )
        # Each waits for its app's close reply: one slow app must not hold up the rest.
        # The deliveries are failed already (``shutdown``); a socket that breaks while
        # closing is closed all the same.
        results = await asyncio.gather(
            *(c.shutdown(code, reason) for c in conns), return_exceptions=True
        )
        for conn, result in zip(conns, results, strict=True):
            if isinstance(result, Exception):
                log.info(
                    "stream of app %s from %s: close failed: %r", conn.app_id, conn.peer, result
                )

    async def stop(self) -> None:
        """Server stopping: no more timers or checks."""
        self._stopped = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
