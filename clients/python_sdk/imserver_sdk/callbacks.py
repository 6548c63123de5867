"""Receiving card-action callbacks from imserver (docs/cards.md, section 6).

When someone presses a button in a card, the server POSTs a signed
``card.action`` callback to the app's ``callback_url``. Delivery is *at least
once*: anything but a timely 2xx is retried with backoff, so the same
``action_id`` can arrive more than once. This module verifies the signature,
parses the payload into a :class:`CallbackAction`, and - in
:func:`callback_handler` - turns that into an aiohttp handler that drops
repeats, so application code sees each action once in the common case.

The same URL receives the app events the app subscribed to (docs/cards.md
"App events"): ``{"type": "event", ...}`` payloads, parsed into an
:class:`AppEvent` by :func:`parse_delivery` and passed to ``on_event``.

Usage::

    async def on_action(a: CallbackAction) -> dict | None:
        if a.state == "approved":
            return {"status": {"text": "已同意", "color": "green"}}
        return None

    app = web.Application()
    app.router.add_post("/imserver/callback", callback_handler(secret, on_action))
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .signing import DEFAULT_WINDOW_S, NonceCache, SignatureError, verify_signature

__all__ = [
    "APP_EVENTS",
    "AppEvent",
    "CallbackAction",
    "callback_handler",
    "is_app_event",
    "parse_callback",
    "parse_delivery",
]

log = logging.getLogger(__name__)

#: How many handled ``action_id``s the handler remembers. The server gives up
#: after ``cards.callback_max_attempts`` (8) within minutes, so 10k covers any
#: realistic retry burst while keeping memory small. An operator's manual retry
#: after that is delivered again - handlers should still be idempotent.
REMEMBERED_ACTIONS = 10_000

OnAction = Callable[["CallbackAction"], Awaitable["dict[str, Any] | None"]]
OnEvent = Callable[["AppEvent"], Awaitable[None]]

#: The app events an app may subscribe to (docs/cards.md "App events").
APP_EVENTS = ("overdue", "escalated", "reminded", "ding_confirmed", "card_read", "delivered")
Handler = Callable[[web.Request], Awaitable[web.Response]]

_json_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class CallbackAction:
    """One accepted card action, as the server reported it.

    ``version`` and ``state`` are the card's *after* this action (so
    ``state == "approved"`` means this action completed the policy);
    ``version`` is what to pass as ``if_version`` to ``update_card`` (the
    delivery itself makes no new version, docs/cards.md section 6);
    ``decision`` is ``"approve"`` or ``"reject"``; ``at`` is ms since the
    epoch. ``raw`` keeps the whole decoded payload so keys added by newer
    servers are not lost.
    """

    type: str
    app_id: str
    action_id: str
    card_id: str
    out_track_id: str
    version: int
    actor: str
    action: str
    decision: str | None
    inputs: dict[str, Any] = field(hash=False)
    state: str
    at: int
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CallbackAction:
        """Validate and convert a decoded payload; raise ``ValueError`` if malformed.

        The types are checked rather than trusted because application code
        will use these values as database keys and in messages; a clear error
        at the boundary beats a confusing one deep inside the app.
        """
        kind = doc.get("type")
        if kind != "card.action":
            raise ValueError(f"unsupported callback type {kind!r}")

        def text(key: str) -> str:
            val = doc.get(key)
            if not isinstance(val, str) or not val:
                raise ValueError(f"callback field {key!r} must be a non-empty string")
            return val

        def integer(key: str) -> int:
            val = doc.get(key)
            if not isinstance(val, int) or isinstance(val, bool):
                raise ValueError(f"callback field {key!r} must be an integer")
            return val

        decision = doc.get("decision")
        if decision is not None and not isinstance(decision, str):
            raise ValueError("callback field 'decision' must be a string or null")
        inputs = doc.get("inputs")
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise ValueError("callback field 'inputs' must be an object")
        return cls(
            type=kind,
            app_id=text("app_id"),
            action_id=text("action_id"),
            card_id=text("card_id"),
            out_track_id=text("out_track_id"),
            version=integer("version"),
            actor=text("actor"),
            action=text("action"),
            decision=decision,
            inputs=dict(inputs),
            state=text("state"),
            at=integer("at"),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class AppEvent:
    """One app event (docs/cards.md "App events"): something happened to the app's card
    or notice. Delivered at least once like an action: drop repeats by ``event_id``.

    ``card_id``/``out_track_id`` are set for a card, ``notice_id`` for a notice;
    ``user`` is the holder for the per-holder events (``card_read``,
    ``delivered``, ``ding_confirmed``), else None. ``raw`` keeps the whole
    payload (``pending``, ``due_at``, ``to``, ``conv``, ``seq``, ``via``, ...).
    """

    event: str
    event_id: str
    app_id: str
    at: int
    card_id: str | None
    out_track_id: str | None
    notice_id: str | None
    user: str | None
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AppEvent:
        """Validate and convert a decoded event payload; raise ``ValueError`` if malformed."""
        if doc.get("type") != "event":
            raise ValueError(f"not an app event: type {doc.get('type')!r}")
        for key in ("event", "event_id", "app_id"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise ValueError(f"event field {key!r} must be a non-empty string")
        at = doc.get("at")
        if not isinstance(at, int) or isinstance(at, bool):
            raise ValueError("event field 'at' must be an integer")

        def optional(key: str) -> str | None:
            val = doc.get(key)
            if val is not None and not isinstance(val, str):
                raise ValueError(f"event field {key!r} must be a string or absent")
            return val

        card_id, notice_id = optional("card_id"), optional("notice_id")
        if not card_id and not notice_id:
            raise ValueError("an event names a card_id or a notice_id")
        return cls(
            event=doc["event"],
            event_id=doc["event_id"],
            app_id=doc["app_id"],
            at=at,
            card_id=card_id,
            out_track_id=optional("out_track_id"),
            notice_id=notice_id,
            user=optional("user"),
            raw=dict(doc),
        )


def is_app_event(doc: Mapping[str, Any]) -> bool:
    """True for an app event's payload, False for a card action's (or anything else)."""
    return doc.get("type") == "event"


def parse_delivery(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    seen_nonces: NonceCache | None = None,
    previous_secret: str | None = None,
) -> CallbackAction | AppEvent:
    """Like :func:`parse_callback`, for a ``callback_url`` that also receives app events:
    verify the signature, then parse a :class:`CallbackAction` or an :class:`AppEvent`."""
    verify_signature(
        secret,
        headers,
        body,
        window_s=window_s,
        seen_nonces=seen_nonces,
        previous_secret=previous_secret,
    )
    doc = _json_object(body)
    return AppEvent.from_dict(doc) if is_app_event(doc) else CallbackAction.from_dict(doc)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise ValueError("callback body is not JSON") from e
    if not isinstance(doc, dict):
        raise ValueError("callback body is not a JSON object")
    return doc


def parse_callback(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    seen_nonces: NonceCache | None = None,
    previous_secret: str | None = None,
) -> CallbackAction:
    """Verify a callback's signature (with ``secret`` or ``previous_secret``), then parse it.

    Verification comes first so that nothing from an unauthenticated body is
    ever parsed. Raises :class:`~imserver_sdk.signing.SignatureError` for a
    bad or stale signature (or a replayed nonce, with ``seen_nonces``) and
    ``ValueError`` for a correctly signed but malformed payload. Framework
    independent: use it directly when not running aiohttp.
    """
    verify_signature(
        secret,
        headers,
        body,
        window_s=window_s,
        seen_nonces=seen_nonces,
        previous_secret=previous_secret,
    )
    return CallbackAction.from_dict(_json_object(body))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, dumps=_json_dumps
    )


def callback_handler(
    secret: str,
    on_action: OnAction,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    previous_secret: str | None = None,
    on_event: OnEvent | None = None,
) -> Handler:
    """Build an aiohttp request handler for the app's ``callback_url``.

    During a secret rotation pass the new secret as ``secret`` and the old
    one as ``previous_secret`` *before* the rotation is made on the server:
    callbacks signed with either then verify, whenever the server switches
    (it signs with the new secret at once). Drop ``previous_secret`` after.

    The handler answers:

    * ``401 {"error": {"code": ...}}`` when the signature does not verify
      (``missing_header``, ``bad_signature``, ``signature_expired``,
      ``nonce_replayed``); ``400`` for a signed but malformed payload;
    * ``200 {}`` for an ``action_id`` it has already handled (the last
      10 000 are remembered), *without* calling ``on_action`` again;
    * ``200 {"card_update": update}`` when ``on_action`` returns a dict, which
      the server applies to the card at once; ``200 {}`` when it returns None;
    * ``500`` when ``on_action`` raises. The action is then not remembered,
      so the server's retry calls ``on_action`` again - raising is how the app
      says "not processed, please redeliver".

    App events (docs/cards.md "App events") go to ``on_event`` the same way:
    repeats (same ``event_id``) are answered ``200 {}`` without a second
    call, a raise is a ``500`` and a redelivery, and the answer never carries
    a ``card_update``. Without ``on_event`` an event is acknowledged unhandled.

    A repeat that arrives while the first delivery is still running (the
    server times out after 3 s and retries) waits for it instead of answering
    early, so a failure of the first run cannot be masked by a 200 for the
    second. Keep ``on_action`` under the server's callback timeout; for slow
    work, acknowledge and update the card later with ``BusinessClient``.
    """
    nonces = NonceCache(window_s)
    done: dict[str, None] = {}  # insertion-ordered set of handled action ids
    running: dict[str, asyncio.Future[None]] = {}

    def remember(action_id: str) -> None:
        done[action_id] = None
        while len(done) > REMEMBERED_ACTIONS:
            del done[next(iter(done))]

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            action = parse_delivery(
                secret,
                request.headers,
                body,
                window_s=window_s,
                seen_nonces=nonces,
                previous_secret=previous_secret,
            )
        except SignatureError as e:
            return _error(401, e.code, e.message)
        except ValueError as e:
            return _error(400, "invalid_callback", str(e))

        # Events are keyed apart from actions: the two id spaces never collide.
        aid = f"event:{action.event_id}" if isinstance(action, AppEvent) else action.action_id
        while True:
            if aid in done:
                return web.json_response({})
            first = running.get(aid)
            if first is None:
                break
            # shield: a cancelled repeat must not cancel the first delivery.
            await asyncio.shield(first)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        running[aid] = mine
        try:
            if isinstance(action, AppEvent):
                if on_event is not None:
                    await on_event(action)
                update = None  # an event's answer never carries a card_update
            else:
                update = await on_action(action)
            if update is None:
                response = web.json_response({})
            elif isinstance(update, dict):
                # Serialized inside the try: an unserializable update is the
                # app's failure too, and must not be remembered as handled.
                response = web.json_response({"card_update": update}, dumps=_json_dumps)
            else:
                raise TypeError(f"on_action returned {type(update).__name__}, not dict or None")
        except Exception:
            log.exception("card callback handler failed for action %s", aid)
            return _error(500, "handler_failed", "the app failed to process the action")
        else:
            remember(aid)  # before waking waiters, so they see it as done
            return response
        finally:
            del running[aid]
            mine.set_result(None)

    return handle
