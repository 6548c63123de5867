"""One bot's two HTTP endpoints: business events in, card callbacks in.

``POST /bots/<name>/events`` (from the business system): size limit →
signature (the SDK's scheme, keyed with the bot's ``event_secret``) → JSON
envelope → repeat? → ``bot.on_event`` → event and card operation stored in one
transaction → the push is tried inline for a moment so a refusal by the
server (say, an unknown approver) still reaches the business system as a 4xx.

``POST /bots/<name>/callback`` (from imserver): the SDK's ``callback_handler``
verifies it; ``bot.on_action``'s forward is stored before the 2xx, and its
card update is the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from bots.runtime.config import BotConfig
from bots.runtime.effects import action_effects, event_effects, op_rows
from bots.runtime.model import (
    EVENT_ID_RE,
    EVENT_TYPE_RE,
    TRACK_PREFIX,
    Bot,
    BotAction,
    BotEvent,
    CardOp,
    CardPush,
    CardUpdate,
    EventRejected,
    TimerFired,
    track_id,
)
from bots.runtime.outbox import LaneWorker, Outcome
from bots.runtime.store import CARD_LANE, BotStore, OpRows, OutboxItem
from imserver_sdk import CallbackAction, NonceCache, SignatureError, verify_signature

log = logging.getLogger(__name__)

#: Server refusal codes → the code the business system gets (a bot may extend
#: this with its own ``REFUSALS``, e.g. ``no_such_user`` → ``unknown_approver``).
REFUSALS = {
    "no_such_user": "unknown_user",
    "no_such_unit": "unknown_unit",
    "out_of_scope": "out_of_scope",
    "classified_content": "classified_content",
    "invalid_field": "invalid_card",
}


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The one error shape of the webhook: ``{"error": {"code", "message", ...}}``."""
    return json_answer({"error": {"code": code, "message": message, **extra}}, status)


def json_answer(doc: dict[str, Any], status: int = 200) -> web.Response:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json")


async def read_at_most(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` (a chunked body has no length to check)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_envelope(raw: bytes, received_at: float) -> BotEvent:
    """``{"event_id", "type", "data": {...}}`` → :class:`BotEvent`, or EventRejected."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise EventRejected("bad_json", f"the body is not JSON: {e}") from e
    return parse_event(doc, received_at)


def parse_event(doc: Any, received_at: float) -> BotEvent:
    """One event object (a webhook body, or an entry of a polled page) → :class:`BotEvent`."""
    if not isinstance(doc, dict):
        raise EventRejected("bad_json", "the body must be a JSON object")
    event_id, kind, data = doc.get("event_id"), doc.get("type"), doc.get("data")
    if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
        raise EventRejected(
            "invalid_field", "event_id must be 1-56 of A-Z a-z 0-9 _ . : -", "event_id"
        )
    if not isinstance(kind, str) or not EVENT_TYPE_RE.fullmatch(kind):
        raise EventRejected("invalid_field", "type must be 1-64 of a-z 0-9 _ . -", "type")
    if not isinstance(data, dict):
        raise EventRejected("invalid_field", "data must be an object", "data")
    return BotEvent(event_id, kind, data, received_at)


class BotEndpoints:
    """The webhook and callback handlers of one bot, and its two lane workers."""

    def __init__(
        self,
        cfg: BotConfig,
        bot: Bot,
        store: BotStore,
        card_worker: LaneWorker,
        forward_worker: LaneWorker,
        *,
        signature_window_s: float,
        inline_push_timeout_s: float,
    ) -> None:
        self.cfg, self.bot, self.store = cfg, bot, store
        self.card_worker, self.forward_worker = card_worker, forward_worker
        self.window_s = signature_window_s
        self.inline_s = inline_push_timeout_s
        self._nonces = NonceCache(signature_window_s)
        self.refusals = {**REFUSALS, **bot.REFUSALS}

    # -- business events -----------------------------------------------------------

    async def handle_event(self, request: web.Request) -> web.Response:
        limit = self.cfg.max_event_bytes
        if request.content_length is not None and request.content_length > limit:
            return error(413, "payload_too_large", f"an event may be at most {limit} bytes")
        raw = await read_at_most(request, limit)
        if raw is None:
            return error(413, "payload_too_large", f"an event may be at most {limit} bytes")
        try:
            verify_signature(
                self.cfg.event_secret,
                request.headers,
                raw,
                window_s=self.window_s,
                seen_nonces=self._nonces,
            )
        except SignatureError as e:
            return error(401, e.code, e.message)
        try:
            event = parse_envelope(raw, time.time())
            if self.store.event(self.cfg.name, event.event_id) is not None:
                return self._repeat(event.event_id)
            ops, state = self.prepare(event)
        except EventRejected as e:
            extra = {"field": e.field} if e.field else {}
            return error(e.status, e.code, e.message, **extra)
        accepted = self.store.accept_event(
            self.cfg.name, event, ops, hold_s=self.inline_s + 1.0, state=state
        )
        if not accepted:
            return self._repeat(event.event_id)  # a concurrent twin got there first
        now_keys = [key for key, op in ops if op["op"] != "timer"]
        if not now_keys:
            return json_answer({"event_id": event.event_id, "state": "ignored"})
        return await self._deliver_inline(event.event_id, now_keys)

    def prepare(self, event: BotEvent) -> tuple[OpRows, dict[str, Any] | None]:
        """Ask the bot about a new event: its card-lane rows and state, or EventRejected.

        The one path of every event, pushed (webhook) or pulled (poller).
        """
        effects = event_effects(self.bot.on_event(event))
        return self._ops(event.event_id, effects.cards), effects.state

    def _ops(self, event_id: str, cards: tuple[CardOp, ...]) -> OpRows:
        """The card-lane rows of an event; an update must name a card the bot knows."""
        for op in cards:
            if isinstance(op, CardUpdate) and op.card is None:
                target = op.event_id
                if target is None or self.store.event(self.cfg.name, target) is None:
                    raise EventRejected(
                        "unknown_event", f"no earlier event {target!r} to update", status=422
                    )
        first = cards[0] if len(cards) == 1 else None
        first_key = None
        if isinstance(first, CardPush) and first.key is None:
            first_key = f"push:{event_id}"
        elif isinstance(first, CardUpdate):
            first_key = f"update:{event_id}"
        return op_rows(cards, event_id, f"e:{event_id}:", first_key=first_key)

    def _repeat(self, event_id: str) -> web.Response:
        state = self.store.event_state(self.cfg.name, event_id)
        return json_answer({"event_id": event_id, "duplicate": True, **state})

    async def _deliver_inline(self, event_id: str, keys: list[str]) -> web.Response:
        """Try the event's operations in order, for up to ``inline_s`` in all.

        The first refusal by the server answers 422. If nothing was pushed
        yet the event is forgotten (a corrected resend with the same id is
        new); otherwise the cards it had pushed are closed (status 已撤回),
        so no one acts on a half-dispatched event, its other operations are
        parked as ``failed`` and the event is kept (a resend is a repeat).
        """
        queued = json_answer({"event_id": event_id, "state": "queued"}, 202)
        deadline = time.monotonic() + self.inline_s
        main: dict[str, Any] = {}
        pushed: list[str] = []
        for key in keys:
            item = self.store.item(self.cfg.name, CARD_LANE, key)
            if item is None:  # a worker already finished it (only after a long stall)
                continue
            try:
                remaining = max(0.01, deadline - time.monotonic())
                outcome = await asyncio.wait_for(self.card_worker.deliver(item), remaining)
            except TimeoutError:
                self._release_rest(keys)
                return queued
            if outcome.kind == "retry":
                self._release_rest(keys)
                return queued
            if outcome.kind == "failed":
                return await self._refused(event_id, outcome, pushed)
            otid = item.op.get("out_track_id") or item.op.get("card", {}).get("out_track_id")
            if item.op["op"] == "push":
                pushed.append(otid)
            if not main or otid == track_id(event_id):  # the answer names the main card
                main = {"out_track_id": otid, "card_id": (outcome.result or {}).get("card_id")}
        if not main:
            return self._repeat(event_id)
        return json_answer({"event_id": event_id, "state": "delivered", **main}, 201)

    def _release_rest(self, keys: list[str]) -> None:
        for key in keys:
            item = self.store.item(self.cfg.name, CARD_LANE, key)
            if item is not None:
                self.store.release(item.id)
        self.card_worker.wake()

    async def _withdraw(self, pushed: list[str]) -> None:
        """Close the cards a refused event had already pushed (best effort, logged)."""
        changes = {"state": "closed", "status": {"text": "已撤回（下发失败）", "color": "gray"}}
        for otid in pushed:
            op = {"op": "update", "out_track_id": otid, "changes": changes}
            outcome = await self.card_worker.attempt_only(op)
            if outcome.kind != "done":
                log.error("bot %s: could not withdraw %s: %s", self.cfg.name, otid, outcome.error)

    async def _refused(self, event_id: str, outcome: Outcome, pushed: list[str]) -> web.Response:
        if pushed:
            self.store.abandon_event(self.cfg.name, event_id, f"refused: {outcome.error}")
            await self._withdraw(pushed)
        else:
            self.store.forget_event(self.cfg.name, event_id)
        code = self.refusals.get(outcome.code, "card_refused")
        details = {"server_status": outcome.status, "server_code": outcome.code}
        if outcome.result and outcome.result.get("field"):
            details["server_field"] = outcome.result["field"]
        return error(422, code, f"the server refused the card: {outcome.error}", details=details)

    # -- card callbacks (wrapped by the SDK's callback_handler) ------------------------

    async def on_callback(self, callback: CallbackAction) -> dict[str, Any] | None:
        """Persist the forward and card operations, then answer with the card update.

        No ``await`` between reading the event's state and storing the new
        one: callbacks of one event (units reporting at once) cannot
        interleave and lose an update. (The SDK dedupes repeats in memory.)
        """
        otid = callback.out_track_id
        owner = self.store.card_owner(self.cfg.name, otid)
        meta: dict[str, Any] = {}
        if owner is not None:
            event_id: str | None = owner[0]
            meta = owner[1]
        else:
            event_id = otid[len(TRACK_PREFIX) :] if otid.startswith(TRACK_PREFIX) else None
        event = self.store.event(self.cfg.name, event_id) if event_id else None
        state = self.store.state(self.cfg.name, event.event_id) if event else {}
        effects = action_effects(self.bot.on_action(BotAction(callback, event, state, meta)))
        forward: dict[str, Any] | None = None
        if effects.forward is not None:
            forward = {**effects.forward.body, "action_id": callback.action_id}
            if event is not None:
                forward.setdefault("event_id", event.event_id)
        ops: OpRows = []
        if effects.cards:
            if event is None:
                log.error("bot %s: %s has no event; its card operations are dropped",
                          self.cfg.name, otid)  # fmt: skip
            else:
                ops = op_rows(effects.cards, event.event_id, f"a:{callback.action_id}:")
        answer = self.store.accept_action(
            self.cfg.name,
            callback.action_id,
            otid,
            forward,
            dict(effects.answer.changes) if effects.answer is not None else None,
            ops=ops,
            event_id=event.event_id if event else None,
            state=effects.state,
        )
        self.forward_worker.wake()
        if ops:
            self.card_worker.wake()
        return answer

    async def fire_timer(self, item: OutboxItem) -> Outcome:
        """A timer row is due: ask the bot, store what it answered, mark the row done."""
        event_id = item.op["event_id"]
        event = self.store.event(self.cfg.name, event_id)
        if event is None:
            return Outcome("failed", error=f"timer {item.key}: event {event_id} is gone")
        state = self.store.state(self.cfg.name, event_id)
        fired = TimerFired(item.op["name"], item.op.get("data", {}), event, state)
        effects = self.bot.on_timer(fired)
        ops = op_rows(effects.cards, event_id, f"t:{item.key}:")
        self.store.complete_timer(item.id, self.cfg.name, event_id, ops, effects.state)
        return Outcome("recorded")
