"""Stream mode: receive the app's callbacks over an outbound WebSocket (docs/cards.md).

For business systems that cannot expose a ``callback_url`` (an OA system
inside an intranet): the app connects *out* to ``GET /api/v1/stream``, signed
like any app request, and the server delivers each callback on that socket.
Every ``callback`` frame carries the exact HTTP callback - its ``headers`` and
the signed ``body`` - so it is verified with the same secret and code as an
HTTP callback (:func:`~imserver_sdk.signing.verify_signature`): a frame that
does not verify is refused (``nack``), even on a socket the app opened itself,
so a proxy or a misrouted connection cannot inject decisions.

Delivery is at least once: an ``ack`` only counts once the server reads it,
so after a dropped connection the same ``action_id`` may come again (to this
or another connection of the app). :class:`AppStream` drops repeats it has
already handled (the last 10 000 ``action_id`` values, in memory); an app that
must survive its own restart without handling a repeat keeps its own record
too, as with HTTP callbacks.

Usage::

    async def on_action(a: CallbackAction) -> dict | None:
        return {"status": {"text": "已同意", "color": "green"}}

    async with BusinessClient(url, "oa", secret) as biz:
        await biz.stream(on_action)  # runs until cancelled; reconnects by itself
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .business import BusinessError
from .callbacks import REMEMBERED_ACTIONS, CallbackAction
from .signing import DEFAULT_WINDOW_S, NonceCache, SignatureError, sign_request, verify_signature

__all__ = ["AppStream", "EventHandler", "StreamHandler"]

log = logging.getLogger(__name__)

StreamHandler = Callable[[CallbackAction], Awaitable["dict[str, Any] | None"]]
#: For outbox items that are not card actions (app events): gets the decoded body.
EventHandler = Callable[[dict[str, Any]], Awaitable["dict[str, Any] | None"]]

STREAM_PATH = "/api/v1/stream"
#: Handshake answers worth retrying: rate limited, or the server is not well.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _item_key(doc: dict[str, Any], frame_action_id: Any) -> str:
    """What repeats of an item share: a card action's ``action_id``, an event's ``event_id``.

    Both come from the signed body; the frame's ``action_id`` (the outbox key,
    not covered by the signature) only when the body names neither.
    """
    for key in ("action_id", "event_id"):
        value = doc.get(key)
        if isinstance(value, str) and value:
            return value
    if isinstance(frame_action_id, str) and frame_action_id:
        return frame_action_id
    raise ValueError("callback names no action_id or event_id")


class AppStream:
    """One app's stream connection, reconnected with backoff until :meth:`run` is cancelled.

    ``handler`` gets each ``card.action`` callback once and may return a
    ``card_update`` (sent with the ack, applied by the server as for an HTTP
    callback's answer); raising makes the SDK ``nack``, so the server retries.
    Other items (app events) go to ``on_event`` with their decoded body; without
    one they are acknowledged and logged. ``connected`` is set while a socket
    is registered with the server (after its ``hello`` frame).
    """

    def __init__(
        self,
        base_url: str,
        app_id: str,
        secret: str,
        handler: StreamHandler,
        *,
        on_event: EventHandler | None = None,
        previous_secret: str | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        heartbeat_s: float = 30.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self._secret = secret
        self._previous = previous_secret
        self._handler = handler
        self._on_event = on_event
        self._window_s = window_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._heartbeat_s = heartbeat_s
        self._nonces = NonceCache(window_s)
        self._done: dict[str, None] = {}  # insertion-ordered set of handled action ids
        self._running: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()  # answers from concurrent handlers, one frame at a time
        self.connected = asyncio.Event()
        #: How many sockets were registered so far (reconnects included).
        self.connections = 0

    def __repr__(self) -> str:
        return f"AppStream({self.base_url!r}, app_id={self.app_id!r})"  # never the secret

    async def run(self) -> None:
        """Connect, serve, reconnect after any drop; returns only by cancellation.

        Raises :class:`~imserver_sdk.BusinessError` when the server refuses the
        handshake for good (a bad secret, an unknown app: the server's code,
        e.g. ``bad_signature``); connection failures and 429/5xx are retried.
        """
        attempt = 0
        async with aiohttp.ClientSession() as session:
            try:
                while True:
                    try:
                        if await self._serve_once(session):
                            attempt = 0
                    except aiohttp.WSServerHandshakeError as e:
                        if e.status not in _RETRY_STATUSES:
                            raise await self._refusal(session) from e
                        log.warning("stream handshake answered %s; retrying", e.status)
                    except (aiohttp.ClientError, OSError, TimeoutError) as e:
                        log.info("stream connection failed: %s", e)
                    low, high = self._backoff
                    delay = min(high, low * 2**attempt) * random.uniform(0.5, 1.0)
                    attempt += 1
                    await asyncio.sleep(delay)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve_once(self, session: aiohttp.ClientSession) -> bool:
        """One socket from handshake to close; True if the server registered it."""
        headers = sign_request(self.app_id, self._secret, b"")
        registered = False
        async with session.ws_connect(
            self.base_url + STREAM_PATH, headers=headers, heartbeat=self._heartbeat_s
        ) as ws:
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        log.warning("stream: the server sent a frame that is not JSON")
                        continue
                    kind = frame.get("type") if isinstance(frame, dict) else None
                    if kind == "hello":
                        registered = True
                        self.connections += 1
                        self.connected.set()
                    elif kind == "callback":
                        task = asyncio.get_running_loop().create_task(self._deliver(ws, frame))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    elif kind == "error":
                        log.warning("stream: server refused a frame: %s", frame)
            finally:
                self.connected.clear()
        log.info("stream closed (code %s); reconnecting", ws.close_code)
        return registered

    async def _deliver(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
        """Verify, dedupe, handle and answer one ``callback`` frame."""
        delivery_id = frame.get("id")
        headers, body = frame.get("headers"), frame.get("body")
        if not isinstance(delivery_id, str):
            log.warning("stream: callback frame without an id: dropped")
            return
        if not isinstance(headers, dict) or not isinstance(body, str):
            await self._send(ws, {"type": "nack", "id": delivery_id, "error": "malformed frame"})
            return
        try:
            verify_signature(
                self._secret,
                headers,
                body.encode(),
                window_s=self._window_s,
                seen_nonces=self._nonces,
                previous_secret=self._previous,
            )
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("callback body is not a JSON object")
            key = _item_key(doc, frame.get("action_id"))
        except SignatureError as e:
            log.warning("stream: callback frame failed verification: %s", e)
            await self._send(ws, {"type": "nack", "id": delivery_id, "error": e.code})
            return
        except ValueError as e:
            nack = {"type": "nack", "id": delivery_id, "error": f"invalid_callback: {e}"}
            await self._send(ws, nack)
            return
        reply = await self._handle_once(doc, key)
        await self._send(ws, {"id": delivery_id, **reply})

    async def _handle_once(self, doc: dict[str, Any], aid: str) -> dict[str, Any]:
        """The ack or nack for ``doc``, calling the handler unless ``aid`` was handled."""
        while True:
            if aid in self._done:
                return {"type": "ack"}
            first = self._running.get(aid)
            if first is None:
                break
            await asyncio.shield(first)  # a repeat waits for the first run's outcome
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[aid] = mine
        try:
            if doc.get("type") == "card.action":
                update = await self._handler(CallbackAction.from_dict(doc))
            elif self._on_event is not None:
                update = await self._on_event(doc)
            else:
                log.warning("stream: %s item %s acknowledged unhandled", doc.get("type"), aid)
                update = None
            if update is not None and not isinstance(update, dict):
                raise TypeError(f"handler returned {type(update).__name__}, not dict or None")
        except Exception as e:
            log.exception("stream handler failed for action %s", aid)
            return {"type": "nack", "error": f"handler_failed: {type(e).__name__}"}
        else:
            self._done[aid] = None
            while len(self._done) > REMEMBERED_ACTIONS:
                del self._done[next(iter(self._done))]
            return {"type": "ack"} if update is None else {"type": "ack", "card_update": update}
        finally:
            del self._running[aid]
            mine.set_result(None)

    async def _refusal(self, session: aiohttp.ClientSession) -> BusinessError:
        """The server's stable error for a refused handshake (asked again without upgrading).

        aiohttp does not hand out the body of a refused upgrade; the same signed
        request without ``Upgrade`` gets the same refusal with its JSON body.
        """
        headers = sign_request(self.app_id, self._secret, b"")
        async with session.get(self.base_url + STREAM_PATH, headers=headers) as resp:
            return BusinessError.from_response(resp.status, await resp.read())

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
        """Answer on the socket if it is still open (else the server redelivers: fine)."""
        async with self._send_lock:
            if ws.closed:
                return
            try:
                await ws.send_str(_dumps(frame))
            except (ConnectionError, RuntimeError) as e:
                log.info("stream: answer not sent (%s); the server will redeliver", e)
