"""The asyncio client for the imserver WebSocket protocol (docs/protocol.md).

Design in one paragraph: one :class:`Client` owns at most one live WebSocket at
a time (a ``_Connection``). A reader task per connection decodes frames and
resolves per-request futures by ``id`` (``result``/``error``/``pong``) or turns
``event`` frames into :class:`Event` objects on a queue. When a connection
drops, a supervisor task reconnects with jittered exponential backoff,
re-authenticates and re-syncs; requests that were waiting on the dead
connection fail with :class:`ClientClosed`, except ``send`` which resends with
the same ``client_msg_id`` (the server makes that idempotent) so callers get
exactly-once *storage* without doing anything. Message events are deduplicated
by ``(conv, seq)`` through :class:`~imserver_sdk.dedupe.SeqTracker`, because the
server only promises at-least-once delivery.

Every request first takes a slot from a :class:`~imserver_sdk.pacing.RequestPacer`
set to the budget the server announced, and a ``rate_limited`` answer is
retried after the server's ``retry_after_ms`` (requests are safe to repeat:
sends by ``client_msg_id``, the rest read or set state). When the server warns
with ``auth.expiring`` and the token is a provider callable, the client fetches
a fresh token and re-authenticates on the open socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from .codec import Codec, get_codec
from .dedupe import SeqStatus, SeqTracker
from .errors import ClientClosed, CodecError, ProtocolError, ServerError
from .pacing import RequestPacer

__all__ = ["Ack", "Client", "Event", "TokenProvider"]

log = logging.getLogger("imserver_sdk")

#: A token, or a (sync or async) callable returning a fresh one. Callables are
#: invoked on every (re)connect so short-lived tokens can be refreshed.
TokenProvider = str | Callable[[], str | Awaitable[str]]

#: Close codes after which reconnecting cannot help (protocol section 7):
#: 4002 auth failed (needs a new token), 4010 replaced by a newer login.
NO_RECONNECT_CODES: Final = frozenset({4002, 4010})
#: Close codes after which resending the same ``send`` frame is pointless:
#: 1009 means the frame itself is too big and will be rejected again.
NO_RESEND_CODES: Final = NO_RECONNECT_CODES | {1009}
#: Error codes of a failed ``auth`` request.
AUTH_ERROR_CODES: Final = frozenset({"token_invalid", "token_expired"})
#: The session outlived its token. With a fixed token string reconnecting can
#: only be refused, so the client stops; with a provider it reconnects.
CLOSE_TOKEN_EXPIRED: Final = 4013
#: Times one request is resent after ``rate_limited`` before the error is
#: raised; retrying also stops once ``request_timeout`` has passed since the
#: first refusal. Several devices of one user share one budget, so a request
#: may well be refused a few times in a row while they all stay within it.
RATE_LIMIT_RETRIES: Final = 50

_ABNORMAL_CLOSE: Final = 1006


@dataclass(slots=True, frozen=True)
class Event:
    """One server push: ``name`` is the event name (``message``, ``read``,
    ``presence``, ...) and ``data`` its payload, exactly as on the wire."""

    name: str
    data: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Ack:
    """The server's confirmation that a message is durably stored.

    ``duplicate`` is true when this was a resend of an already stored
    ``client_msg_id`` (e.g. the SDK retried after a reconnect): the message was
    stored once, and ``conv``/``seq``/``ts`` are those of the original.
    """

    conv: str
    seq: int
    ts: int
    client_msg_id: str
    duplicate: bool = False

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Ack:
        """Build from a ``send`` result; raises ProtocolError if it is malformed."""
        try:
            return cls(
                conv=str(data["conv"]),
                seq=int(data["seq"]),
                ts=int(data.get("ts") or 0),
                client_msg_id=str(data["client_msg_id"]),
                duplicate=bool(data.get("duplicate", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed send result: {data!r}") from exc


class _Connection:
    """One WebSocket plus the requests in flight on it.

    Pending futures are per connection so that a drop fails exactly the
    requests that were sent on the dead socket - never ones already queued for
    the next connection.
    """

    __slots__ = (
        "close_code",
        "close_reason",
        "closed",
        "pending",
        "reader",
        "ready",
        "ws",
    )

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ready = False  # authenticated and installed as the client's connection
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.reader: asyncio.Task[None] | None = None

    def fail_pending(self) -> None:
        """Fail every in-flight request with ClientClosed (one instance each)."""
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ClientClosed(self.close_code, self.close_reason))
        self.pending.clear()


class Client:
    """An imserver client session; see the module docstring for the design.

    Use as ``async with Client(url, token) as c: ...`` or call
    :meth:`connect` / :meth:`close` yourself. All methods must be called from
    the event loop the client was connected on.
    """

    def __init__(
        self,
        url: str,
        token: TokenProvider,
        *,
        codec: str = "json",
        device_label: str | None = None,
        reconnect: bool = True,
        request_timeout: float = 10.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        ping_interval: float = 30.0,
        auto_sync: bool = True,
    ) -> None:
        self.url = url
        self._token = token
        self._codec: Codec = get_codec(codec)
        #: Free-form local label for logs/repr only. The protocol binds the
        #: device to the token (``dev`` claim), so it is never sent.
        self.device_label = device_label
        self.reconnect = reconnect
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ping_interval = ping_interval
        self.auto_sync = auto_sync

        #: From the auth result (refreshed on every reconnect).
        self.user: str | None = None
        self.device: str | None = None
        self.limits: dict[str, Any] = {}
        self.auth_info: dict[str, Any] = {}
        #: Last WebSocket close code seen from the server (None: never closed).
        self.close_code: int | None = None
        self.close_reason: str = ""
        #: How many times the client has reconnected after a drop.
        self.reconnects = 0

        self._conn: _Connection | None = None
        self._ids = itertools.count(1)
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._tracker = SeqTracker()
        self._messages: dict[str, dict[int, dict[str, Any]]] = {}
        self._conversations: dict[str, dict[str, Any]] = {}
        self._sync_lock = asyncio.Lock()
        self._state_changed = asyncio.Event()
        self._started = False  # connect() succeeded at least once
        self._finished = False  # permanently closed: no more reconnects
        self._closing = False  # close() called
        self._supervisor: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._bg_sync: asyncio.Task[None] | None = None
        self._bg_sync_again = False
        self._pacer = RequestPacer()
        self._reauth: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """True while an authenticated connection is open."""
        conn = self._conn
        return conn is not None and conn.ready and not conn.closed.is_set()

    @property
    def codec(self) -> Codec:
        """The wire codec in use (selects the subprotocol)."""
        return self._codec

    @property
    def tracker(self) -> SeqTracker:
        """The dedupe tracker (read it, do not mutate it)."""
        return self._tracker

    def last_seq(self, conv: str) -> int:
        """Highest contiguous seq held for ``conv`` (0 if none)."""
        return self._tracker.last(conv)

    def messages(self, conv: str) -> list[dict[str, Any]]:
        """Messages held in memory for ``conv``, ascending ``seq``, deduped.

        Includes everything received by event or sync since this client
        object was created (never trimmed - fine for tests and short sessions).
        A recalled target is replaced by its recalled form (empty body).
        """
        held = self._messages.get(conv, {})
        return [held[seq] for seq in sorted(held)]

    def conversations(self) -> dict[str, dict[str, Any]]:
        """Conversation metadata from the latest sync pages (without messages)."""
        return dict(self._conversations)

    def _notify_state(self) -> None:
        """Wake everyone waiting in ``_wait_ready``/``wait_closed``.

        Swapping in a fresh Event after setting the old one gives "condition
        variable" semantics without a lock.
        """
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    def _mark_finished(self) -> None:
        """Enter the terminal state: no reconnects, event streams end."""
        if self._finished:
            return
        self._finished = True
        self._events.put_nowait(None)  # sentinel: ends events()/next_event()
        self._notify_state()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until an authenticated connection is up (e.g. after a drop).

        Raises ClientClosed if the client closes for good, TimeoutError on timeout.
        """
        await self._wait_ready(timeout)

    async def wait_closed(self, timeout: float | None = None) -> int | None:  # noqa: ASYNC109
        """Wait until the client is closed for good; return the last close code.

        "For good" means no reconnect will follow: close() was called, the
        server closed with 4002/4010, or ``reconnect`` is off and it dropped.
        """
        async with asyncio.timeout(timeout):
            while not self._finished:
                await self._state_changed.wait()
        return self.close_code

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, authenticate and (if ``auto_sync``) sync everything missed.

        Raises ServerError (``token_invalid``/``token_expired``) if the server
        refuses the token, and the usual OSError/TimeoutError/websockets errors
        if the server is unreachable. Reconnection only kicks in after this
        first connect succeeded.
        """
        if self._conn is not None and not self._finished:
            raise RuntimeError("client is already connected")
        self._reset_for_connect()
        try:
            conn = await self._open()
        except BaseException:
            self._mark_finished()
            raise
        self._install(conn)
        self._started = True
        self._supervisor = asyncio.create_task(self._supervise(), name="imserver-sdk-supervisor")
        if self.ping_interval > 0:
            self._pinger = asyncio.create_task(self._ping_loop(), name="imserver-sdk-ping")
        if self.auto_sync:
            try:
                await self.sync()
            except ClientClosed:
                # Dropped mid-sync: if we will reconnect, the supervisor syncs
                # again afterwards; otherwise surface the failure.
                if self._finished:
                    await self.close()
                    raise
            except BaseException:
                # Do not leave background tasks running behind a failed connect().
                await self.close()
                raise

    def _reset_for_connect(self) -> None:
        """Allow connect() again after close(): drop the end-of-stream marker."""
        self._finished = False
        self._closing = False
        self._conn = None
        kept: list[Event] = []
        while not self._events.empty():
            item = self._events.get_nowait()
            if item is not None:
                kept.append(item)
        for item in kept:
            self._events.put_nowait(item)

    async def close(self) -> None:
        """Close the connection for good (code 1000); idempotent.

        Pending requests fail with ClientClosed, background tasks stop and
        ``events()`` iterators end once they have drained queued events.
        """
        self._closing = True
        self._mark_finished()
        current = asyncio.current_task()
        tasks = [
            t
            for t in (self._supervisor, self._pinger, self._bg_sync, self._reauth)
            if t is not None
        ]
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1000, reason="client closing")
            if conn.reader is not None and conn.reader is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.reader
            conn.fail_pending()

    async def _get_token(self) -> str:
        """Resolve the token provider (called on every connect attempt)."""
        token = self._token
        if isinstance(token, str):
            return token
        value = token()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str):
            raise TypeError(f"token provider returned {type(value).__name__}, not str")
        return value

    async def _open(self) -> _Connection:
        """Open one WebSocket and authenticate on it; not yet installed.

        On any failure the socket is closed before the exception propagates,
        so half-open connections never leak.
        """
        token = await self._get_token()
        ws = await ws_connect(
            self.url,
            subprotocols=[Subprotocol(self._codec.subprotocol)],
            compression=None,
            open_timeout=10,
            max_size=None,
        )
        conn = _Connection(ws)
        try:
            negotiated = ws.subprotocol
            if negotiated != self._codec.subprotocol and not (
                negotiated is None and not self._codec.binary
            ):
                raise ProtocolError(
                    f"server selected subprotocol {negotiated!r}, "
                    f"wanted {self._codec.subprotocol!r}"
                )
            conn.reader = asyncio.create_task(self._read_loop(conn), name="imserver-sdk-reader")
            try:
                data = await self._roundtrip(conn, "auth", {"token": token}, self.request_timeout)
            except ServerError:
                # The server closes with 4002 right after the error; wait
                # briefly so close_code reflects it, then make sure it is shut.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await conn.closed.wait()
                if conn.close_code is not None:
                    self.close_code, self.close_reason = conn.close_code, conn.close_reason
                raise
            except ClientClosed as exc:
                self.close_code, self.close_reason = exc.code, exc.reason
                raise
        except asyncio.CancelledError:
            ws.transport.abort()
            raise
        except BaseException:
            await self._shutdown(conn)
            raise
        self._adopt_auth_result(data)
        return conn

    def _adopt_auth_result(self, data: dict[str, Any]) -> None:
        """Keep what an auth result says: who we are, the limits, the request budget."""
        self.user = _opt_str(data.get("user"))
        self.device = _opt_str(data.get("device"))
        limits = data.get("limits")
        self.limits = dict(limits) if isinstance(limits, dict) else {}
        self.auth_info = dict(data)
        rate, burst = self.limits.get("requests_per_s"), self.limits.get("request_burst")
        self._pacer.configure(
            float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None,
            burst if isinstance(burst, int) and not isinstance(burst, bool) else None,
        )

    async def _shutdown(self, conn: _Connection) -> None:
        """Close a connection we are abandoning and wait for its reader."""
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if conn.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.reader
        conn.fail_pending()

    def _install(self, conn: _Connection) -> None:
        """Make ``conn`` the client's live connection and wake waiters."""
        conn.ready = True
        self._conn = conn
        self._notify_state()
        if conn.closed.is_set():
            # It died between auth and install; run the normal drop handling.
            self._on_closed(conn)

    # ---------------------------------------------------------- reader & drop

    async def _read_loop(self, conn: _Connection) -> None:
        """Read frames until the socket closes, then run drop handling."""
        code, reason = _ABNORMAL_CLOSE, ""
        try:
            while True:
                raw = await conn.ws.recv()
                try:
                    self._dispatch(conn, raw)
                except Exception:  # never let one odd frame kill the reader
                    log.exception("imserver_sdk: error handling frame")
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                code, reason = exc.rcvd.code, exc.rcvd.reason
        finally:
            conn.close_code, conn.close_reason = code, reason
            conn.closed.set()
            if conn.ready:
                self._on_closed(conn)
            else:
                conn.fail_pending()

    def _on_closed(self, conn: _Connection) -> None:
        """A live connection dropped: decide (synchronously) whether we will
        reconnect *before* failing pending requests, so a waiting ``send`` sees
        the final decision when its ClientClosed arrives."""
        if conn is self._conn:
            self.close_code, self.close_reason = conn.close_code, conn.close_reason
            log.info(
                "imserver_sdk: connection closed code=%s reason=%r",
                conn.close_code,
                conn.close_reason,
            )
            expired_for_good = conn.close_code == CLOSE_TOKEN_EXPIRED and isinstance(
                self._token, str
            )
            if (
                self._closing
                or not self.reconnect
                or conn.close_code in NO_RECONNECT_CODES
                or expired_for_good
            ):
                if expired_for_good:
                    log.warning(
                        "imserver_sdk: token expired and no token provider was given; "
                        "pass a callable as `token` to stay connected"
                    )
                self._mark_finished()
            self._notify_state()
        conn.fail_pending()

    def _dispatch(self, conn: _Connection, raw: str | bytes) -> None:
        """Route one decoded frame: answers to futures, events to the queue."""
        try:
            frame = self._codec.decode(raw)
        except CodecError as exc:
            log.warning("imserver_sdk: dropping undecodable frame: %s", exc)
            return
        ftype = frame.get("type")
        if ftype in ("result", "error", "pong"):
            rid = frame.get("id")
            fut = conn.pending.get(rid) if isinstance(rid, int) else None
            if fut is None or fut.done():
                if ftype == "error":
                    log.warning("imserver_sdk: unmatched error frame: %r", frame)
                return
            if ftype == "error":
                fut.set_exception(ServerError.from_frame(frame))
            elif ftype == "result":
                data = frame.get("data")
                fut.set_result(data if isinstance(data, dict) else {})
            else:
                fut.set_result({})
        elif ftype == "event":
            name = frame.get("event")
            data = frame.get("data")
            if not isinstance(name, str):
                log.warning("imserver_sdk: event frame without name: %r", frame)
                return
            payload: dict[str, Any] = data if isinstance(data, dict) else {}
            if name == "auth.expiring":
                self._schedule_reauth(conn)
                self._events.put_nowait(Event(name, payload))
            elif name == "message":
                status = self._ingest(payload)
                if status is SeqStatus.GAP and self.auto_sync:
                    self._schedule_sync()
            elif name == "resync":
                # The server's node may have missed events (its bus reconnected,
                # or a backlog was too long): resume as after a reconnect. Also
                # queued, so the app can refresh what sync does not carry (cards).
                if self.auto_sync:
                    self._schedule_sync()
                self._events.put_nowait(Event(name, payload))
            else:
                self._events.put_nowait(Event(name, payload))
        else:
            log.debug("imserver_sdk: ignoring frame of type %r", ftype)

    def _ingest(self, msg: dict[str, Any]) -> SeqStatus | None:
        """Dedupe one message; if new, hold it and emit a ``message`` event.

        Returns the tracker status, or None for a message without a usable
        ``(conv, seq)`` - that one is passed through undeduped so it is not lost.
        """
        conv = msg.get("conv")
        seq = msg.get("seq")
        if not isinstance(conv, str) or isinstance(seq, bool) or not isinstance(seq, int):
            log.warning("imserver_sdk: message without conv/seq: %r", msg)
            self._events.put_nowait(Event("message", msg))
            return None
        try:
            status = self._tracker.accept(conv, seq)
        except ValueError:
            log.warning("imserver_sdk: message with invalid seq: %r", msg)
            self._events.put_nowait(Event("message", msg))
            return None
        if status is SeqStatus.DUPLICATE:
            return status
        held = self._messages.setdefault(conv, {})
        held[seq] = msg
        if msg.get("kind") == "recall":
            body = msg.get("body")
            target = body.get("target_seq") if isinstance(body, dict) else None
            if isinstance(target, int) and target in held:
                held[target] = {**held[target], "recalled": True, "body": {}}
        self._events.put_nowait(Event("message", msg))
        return status

    # --------------------------------------------------------- re-auth in place

    def _schedule_reauth(self, conn: _Connection) -> None:
        """``auth.expiring`` arrived: refresh in place if we can get a fresh token."""
        if isinstance(self._token, str):
            return  # nothing to refresh with: the server closes with 4013 at expiry
        if self._reauth is not None and not self._reauth.done():
            return
        self._reauth = asyncio.create_task(self._reauthenticate(conn), name="imserver-sdk-reauth")

    async def _reauthenticate(self, conn: _Connection) -> None:
        """Send ``auth`` with a fresh token on the open socket; on failure let it expire.

        A failure is only logged: the server then closes with 4013 and the
        supervisor reconnects, asking the provider again.
        """
        try:
            token = await self._get_token()
            data = await self._roundtrip(conn, "auth", {"token": token}, self.request_timeout)
        except (ServerError, ClientClosed, TimeoutError, TypeError) as exc:
            log.warning("imserver_sdk: re-authentication failed: %r", exc)
            return
        if conn is self._conn:
            self._adopt_auth_result(data)

    # ------------------------------------------------------ supervisor & ping

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random, so
        a fleet of clients kicked off by a restart does not reconnect in step."""
        base = min(self.backoff_max, self.backoff_initial * (2.0**attempt))
        return base / 2 + random.uniform(0, base / 2)

    async def _supervise(self) -> None:
        """Reconnect (with backoff) whenever the live connection drops."""
        while not self._finished:
            conn = self._conn
            if conn is None:  # pragma: no cover - only before connect()
                return
            await conn.closed.wait()
            attempt = 0
            while not self._finished:
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                if self._finished:
                    return
                try:
                    new = await self._open()
                except ServerError as exc:
                    if exc.code in AUTH_ERROR_CODES:
                        log.warning("imserver_sdk: re-auth failed (%s); giving up", exc.code)
                        if self.close_code not in NO_RECONNECT_CODES:
                            self.close_code, self.close_reason = 4002, exc.code
                        self._mark_finished()
                        return
                    log.info("imserver_sdk: reconnect attempt failed: %s", exc)
                    continue
                except ClientClosed as exc:
                    if exc.code in NO_RECONNECT_CODES:
                        self._mark_finished()
                        return
                    log.info("imserver_sdk: reconnect attempt failed: %s", exc)
                    continue
                except Exception as exc:  # OSError, TimeoutError, InvalidStatus, ...
                    log.info("imserver_sdk: reconnect attempt failed: %r", exc)
                    continue
                if self._finished:  # close() raced with the reconnect
                    await self._shutdown(new)
                    return
                self.reconnects += 1
                if self.auto_sync:
                    # Scheduled before _install wakes waiting senders, so the
                    # sync request normally goes out first; in the background
                    # so this loop is free to reconnect again should the new
                    # connection die while the sync is running.
                    self._schedule_sync()
                self._install(new)
                break

    async def _ping_loop(self) -> None:
        """Send an application ``ping`` every ``ping_interval`` seconds.

        The server closes connections silent for ``idle_timeout_s`` (4011);
        a ping that gets no pong in time means the socket is dead, so we drop
        it and let the supervisor reconnect.
        """
        while not self._finished:
            await asyncio.sleep(self.ping_interval)
            conn = self._conn
            if conn is None or not conn.ready or conn.closed.is_set():
                continue
            try:
                await self._roundtrip(conn, "ping", {}, self.request_timeout)
            except TimeoutError:
                log.warning("imserver_sdk: ping timed out; dropping connection")
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=4000, reason="ping timeout")
            except (ClientClosed, ServerError):
                pass

    def _schedule_sync(self) -> None:
        """Run a sync in the background (gap seen, or just reconnected).

        Bursts coalesce: while one runs, further triggers just ask it to go
        round once more, so a flood of out-of-order events costs one extra
        sync, not one each.
        """
        if self._bg_sync is not None and not self._bg_sync.done():
            self._bg_sync_again = True
            return
        self._bg_sync = asyncio.create_task(self._background_sync(), name="imserver-sdk-sync")

    async def _background_sync(self) -> None:
        while not self._finished:
            self._bg_sync_again = False
            try:
                await self.sync()
            except Exception as exc:  # background task: log, never crash
                log.info("imserver_sdk: background sync failed: %r", exc)
            if not self._bg_sync_again:
                return

    # --------------------------------------------------------------- requests

    async def _wait_ready(self, wait_s: float | None) -> _Connection:
        """Return the live connection, waiting up to ``timeout`` for a reconnect.

        Raises ClientClosed if there is none and never will be, TimeoutError if
        the wait times out.
        """
        async with asyncio.timeout(wait_s):
            while True:
                if self._finished or not self._started:
                    raise ClientClosed(self.close_code, self.close_reason or "client is closed")
                conn = self._conn
                if conn is not None and conn.ready and not conn.closed.is_set():
                    return conn
                await self._state_changed.wait()

    async def _roundtrip(
        self,
        conn: _Connection,
        type_: str,
        fields: dict[str, Any],
        wait_s: float | None,
    ) -> dict[str, Any]:
        """Send one request on ``conn`` and wait for its answer, paced and retried.

        The request waits for its slot in the server's budget; a
        ``rate_limited`` answer holds back every request of this client for
        the server's ``retry_after_ms`` (plus a little jitter, so devices of
        one user do not retry in step) and then resends it, up to
        ``RATE_LIMIT_RETRIES`` times and for at most ``request_timeout`` after
        the first refusal. ``wait_s`` bounds each wait for an answer.
        """
        loop = asyncio.get_running_loop()
        attempt = 0
        give_up_at = float("inf")
        while True:
            await self._pacer.wait()
            try:
                return await self._send_and_wait(conn, type_, fields, wait_s)
            except ServerError as exc:
                if exc.code != "rate_limited" or attempt >= RATE_LIMIT_RETRIES:
                    raise
                give_up_at = min(give_up_at, loop.time() + self.request_timeout)
                if loop.time() >= give_up_at:
                    raise
                attempt += 1
                hint = exc.retry_after_s
                delay = hint if hint is not None else self.backoff_initial * 2.0**attempt
                self._pacer.pause(delay + random.uniform(0.0, 0.01 + delay * 0.1))

    async def _send_and_wait(
        self,
        conn: _Connection,
        type_: str,
        fields: dict[str, Any],
        wait_s: float | None,
    ) -> dict[str, Any]:
        """Send one request frame on ``conn`` and wait for its answer by ``id``."""
        if conn.closed.is_set():
            raise ClientClosed(conn.close_code, conn.close_reason)
        rid = next(self._ids)
        frame: dict[str, Any] = {"type": type_, "id": rid}
        frame.update((k, v) for k, v in fields.items() if k not in ("type", "id"))
        payload = self._codec.encode(frame)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.pending[rid] = fut
        try:
            try:
                await conn.ws.send(payload)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else _ABNORMAL_CLOSE
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                raise ClientClosed(code, reason) from None
            async with asyncio.timeout(wait_s):
                return await fut
        finally:
            conn.pending.pop(rid, None)

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send a raw request and return its result ``data``.

        Fields are sent as given (None included), so this is also the tool for
        probing server validation. Raises ServerError for an ``error`` answer,
        TimeoutError if none arrives within ``request_timeout``, and
        ClientClosed if the connection drops while waiting or none comes up
        within ``request_timeout`` (while reconnecting).
        """
        try:
            conn = await self._wait_ready(self.request_timeout)
        except TimeoutError:
            raise ClientClosed(self.close_code, "not connected (reconnecting)") from None
        return await self._roundtrip(conn, type, fields, self.request_timeout)

    async def _call(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Like request() but omits fields whose value is None (optional ones)."""
        return await self.request(type_, **{k: v for k, v in fields.items() if v is not None})

    async def ping(self) -> float:
        """Round-trip a ``ping``; returns the latency in seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.request("ping")
        return loop.time() - start

    # -------------------------------------------------------------- messaging

    async def send(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        conv: str | None = None,
        to: str | None = None,
        client_msg_id: str | None = None,
        urgent: bool = False,
    ) -> Ack:
        """Send a message and wait until the server has stored it.

        ``urgent=True`` makes it a DING: every recipient must confirm it
        (:meth:`confirm_ding`); :meth:`ding_status` shows who has.

        If the connection drops (or an answer times out) the same frame is
        resent with the same ``client_msg_id`` once a connection is back; the
        server stores it at most once and answers a resend with
        ``duplicate: true``. Gives up with TimeoutError after
        ``3 * request_timeout`` in total, or ClientClosed if the client closes
        for good. ``conv``/``to`` are passed through unchecked so the server's
        own validation (exactly one of them) applies.
        """
        fields: dict[str, Any] = {
            "client_msg_id": client_msg_id if client_msg_id is not None else uuid.uuid4().hex,
            "kind": kind,
            "body": body,
        }
        if conv is not None:
            fields["conv"] = conv
        if to is not None:
            fields["to"] = to
        if urgent:
            fields["urgent"] = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout * 3
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"send {fields['client_msg_id']} not acknowledged in time")
            conn = await self._wait_ready(remaining)
            try:
                data = await self._roundtrip(
                    conn, "send", fields, min(self.request_timeout, remaining)
                )
            except ClientClosed as exc:
                if exc.code in NO_RESEND_CODES:
                    raise
                # Let the reader finish its drop handling first: it decides
                # whether a reconnect follows, and retrying on a socket that
                # is known dead but not yet marked closed would spin.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await conn.closed.wait()
                if self._finished:
                    raise ClientClosed(self.close_code, self.close_reason) from exc
                log.info("imserver_sdk: connection lost during send; will resend")
                continue
            except TimeoutError:
                continue
            return Ack.from_data(data)

    async def send_text(
        self,
        text: str,
        *,
        conv: str | None = None,
        to: str | None = None,
        mentions: Iterable[str] | None = None,
        mention_all: bool = False,
        client_msg_id: str | None = None,
        urgent: bool = False,
    ) -> Ack:
        """Send a ``text`` message (optionally with @mentions / @all, or as a DING)."""
        body: dict[str, Any] = {"text": text}
        if mentions is not None:
            body["mentions"] = list(mentions)
        if mention_all:
            body["mention_all"] = True
        return await self.send(
            "text", body, conv=conv, to=to, client_msg_id=client_msg_id, urgent=urgent
        )

    async def confirm_ding(self, conv: str, seq: int) -> dict[str, Any]:
        """Confirm an urgent message (DING) you received."""
        return await self.request("ding.confirm", conv=conv, seq=seq)

    async def ding_status(self, conv: str, seq: int) -> dict[str, Any]:
        """Who has and has not confirmed your urgent message."""
        return await self.request("ding.status", conv=conv, seq=seq)

    async def send_file(
        self,
        file: dict[str, Any],
        *,
        conv: str | None = None,
        to: str | None = None,
        client_msg_id: str | None = None,
    ) -> Ack:
        """Send a ``file`` message; ``file`` is the upload result
        (``{"id", "name", "size", "mime"}``) from ``POST /api/v1/files``."""
        return await self.send(
            "file", {"file": file}, conv=conv, to=to, client_msg_id=client_msg_id
        )

    async def sync(self, *, limit: int | None = None) -> int:
        """Fetch everything missed, page by page, until ``more`` is false.

        Each new message is held and pushed as ``Event("message", msg)``;
        duplicates of messages already held are dropped. Returns the number of
        new messages. Concurrent calls are serialized.
        """
        async with self._sync_lock:
            new = 0
            while True:
                since = self._tracker.since()
                fields: dict[str, Any] = {"since": since}
                if limit is not None:
                    fields["limit"] = limit
                data = await self.request("sync", **fields)
                more = bool(data.get("more"))
                convs = data.get("conversations")
                for page in convs if isinstance(convs, list) else []:
                    if not isinstance(page, dict):
                        continue
                    new += self._ingest_sync_page(page, since)
                    more = more or bool(page.get("more"))
                if not more:
                    return new
                if self._tracker.since() == since:
                    # The server says "more" but gave us nothing that moves
                    # the watermark; asking again would loop forever.
                    log.warning("imserver_sdk: sync made no progress; stopping")
                    return new

    def _ingest_sync_page(self, page: dict[str, Any], since: dict[str, int]) -> int:
        """Ingest one conversation of a sync result; returns new-message count."""
        conv = page.get("conv")
        if not isinstance(conv, str):
            return 0
        self._conversations[conv] = {k: v for k, v in page.items() if k != "messages"}
        msgs = page.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return 0
        first = msgs[0].get("seq") if isinstance(msgs[0], dict) else None
        sent = since.get(conv, 0)
        if isinstance(first, int) and first > sent + 1:
            # Sync lists everything after `since` that we may see; if it starts
            # higher, the seqs in between will never come (e.g. from before we
            # joined the group). Stop waiting for them.
            self._tracker.advance(conv, first - 1)
        count = 0
        for msg in msgs:
            if isinstance(msg, dict) and self._ingest(msg) not in (None, SeqStatus.DUPLICATE):
                count += 1
        return count

    async def history(
        self, conv: str, before_seq: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of older messages (not fed into the event stream)."""
        return await self._call("history", conv=conv, before_seq=before_seq, limit=limit)

    async def read(self, conv: str, seq: int) -> dict[str, Any]:
        """Move this user's read cursor in ``conv`` forward to ``seq``."""
        return await self.request("read", conv=conv, seq=seq)

    async def read_status(self, conv: str, seq: int) -> dict[str, Any]:
        """Who has / has not read message ``seq`` (``{"read": [...], "unread": [...]}``)."""
        return await self.request("read_status", conv=conv, seq=seq)

    async def unread(self) -> dict[str, Any]:
        """Unread counts: ``{"total", "conversations": [...]}``."""
        return await self.request("unread")

    async def recall(self, conv: str, seq: int) -> dict[str, Any]:
        """Recall one of our own messages (within ``recall_window_s``)."""
        return await self.request("recall", conv=conv, seq=seq)

    # ----------------------------------------------------------------- groups

    async def create_group(self, name: str, members: Iterable[str]) -> dict[str, Any]:
        """Create a group owned by us; returns ``{"conv", "name", "members"}``."""
        return await self.request("group.create", name=name, members=list(members))

    async def rename_group(self, conv: str, name: str) -> dict[str, Any]:
        return await self.request("group.rename", conv=conv, name=name)

    async def add_members(self, conv: str, members: Iterable[str]) -> dict[str, Any]:
        return await self.request("group.add", conv=conv, members=list(members))

    async def remove_members(self, conv: str, members: Iterable[str]) -> dict[str, Any]:
        return await self.request("group.remove", conv=conv, members=list(members))

    async def leave_group(self, conv: str) -> dict[str, Any]:
        return await self.request("group.leave", conv=conv)

    async def set_role(self, conv: str, user: str, role: str) -> dict[str, Any]:
        return await self.request("group.role", conv=conv, user=user, role=role)

    async def group_members(self, conv: str) -> dict[str, Any]:
        return await self.request("group.members", conv=conv)

    async def list_groups(self) -> dict[str, Any]:
        return await self.request("group.list")

    # --------------------------------------------------------------- presence

    async def presence_query(self, users: Iterable[str]) -> dict[str, Any]:
        return await self.request("presence.query", users=list(users))

    async def presence_subscribe(self, users: Iterable[str]) -> dict[str, Any]:
        return await self.request("presence.subscribe", users=list(users))

    async def presence_unsubscribe(self, users: Iterable[str]) -> dict[str, Any]:
        return await self.request("presence.unsubscribe", users=list(users))

    # ----------------------------------------------------------- address book

    async def users(self, users: Iterable[str]) -> dict[str, Any]:
        """Profiles of up to 200 users: ``{"users": [...], "missing": [ids]}``.

        Phone and ID numbers come masked unless you hold ``pii:read`` (or it is you).
        """
        return await self.request("directory.users", users=list(users))

    async def unit(
        self,
        unit: str,
        *,
        recursive: bool = False,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """One unit: ``{"unit", "ancestors", "children", "members", "cursor"}``.

        ``ancestors`` and ``children`` come with the first page only; pass the
        answer's ``cursor`` back (same ``unit`` and ``recursive``) for the next.
        """
        return await self._call(
            "directory.unit", unit=unit, recursive=recursive, cursor=cursor, limit=limit
        )

    async def search(
        self,
        q: str,
        *,
        unit: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """People by name, pinyin initials (``zs``) or full pinyin, best match first.

        ``unit`` limits it to people in that unit's subtree. Returns
        ``{"members": [...], "cursor"}``; ``cursor`` is None on the last page.
        """
        return await self._call("directory.search", q=q, unit=unit, cursor=cursor, limit=limit)

    async def directory_changes(
        self, since: int = 0, *, limit: int | None = None
    ) -> dict[str, Any]:
        """What changed after change number ``since`` (0: everything), oldest first.

        Returns ``{"units", "removed_units", "members", "removed_members",
        "cursor", "more"}``: apply it, keep ``cursor``, call again while
        ``more``. A ``directory`` event (``{"cursor": n}``) says there is news.
        """
        return await self._call("directory.changes", since=since, limit=limit)

    # ----------------------------------------------------------------- events

    async def events(self) -> AsyncIterator[Event]:
        """Iterate over events as they arrive; ends when the client closes for good.

        Events are consumed: two iterators (or an iterator and next_event())
        share one stream, each event goes to exactly one of them.
        """
        while True:
            item = await self._events.get()
            if item is None:
                self._events.put_nowait(None)  # let other consumers end too
                return
            yield item

    async def next_event(
        self,
        name: str | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - documented public API
        predicate: Callable[[Event], bool] | None = None,
    ) -> Event:
        """Return the next event matching ``name`` and ``predicate``.

        Non-matching events that come first are **consumed and discarded** -
        held messages remain available through :meth:`messages`. Raises
        TimeoutError after ``timeout`` seconds, ClientClosed if the client
        closes for good before a matching event arrives.
        """
        async with asyncio.timeout(timeout):
            while True:
                item = await self._events.get()
                if item is None:
                    self._events.put_nowait(None)
                    raise ClientClosed(self.close_code, self.close_reason or "client is closed")
                if name is not None and item.name != name:
                    continue
                if predicate is not None and not predicate(item):
                    continue
                return item

    def drain_events(self) -> list[Event]:
        """Remove and return every event queued right now (non-blocking)."""
        out: list[Event] = []
        while not self._events.empty():
            item = self._events.get_nowait()
            if item is None:
                self._events.put_nowait(None)
                break
            out.append(item)
        return out

    def __repr__(self) -> str:
        who = f"{self.user}/{self.device}" if self.user else "unauthenticated"
        label = f" [{self.device_label}]" if self.device_label else ""
        state = "connected" if self.connected else ("closed" if self._finished else "offline")
        return f"<imserver_sdk.Client {who}{label} {state} {self.url}>"


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
