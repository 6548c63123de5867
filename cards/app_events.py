"""App events: what happened to an app's own cards and notices, for apps that asked.

An app lists the events it wants in its registration (``"events": [...]``,
docs/cards.md "App events"); nothing is produced for one that did not. Each
event is an outbox entry of kind ``"event"``, so it travels exactly like an
action callback: signed, retried with the same backoff, over HTTP or a stream
connection, surviving restarts. Its ``event_id`` is derived from what it
reports (card, event, holder or timer), so reporting the same thing twice —
a timer fired again after a lost lease, two nodes seeing one delivery, a
device syncing twice — stores one entry: at most one event per holder per
card for ``card_read``, ``delivered`` and ``ding_confirmed``.

Where the events come from:

* ``reminded``, ``overdue``, ``escalated``: the deadline loop builds them
  (:meth:`AppEvents.for_card`) and the store writes them with the timer's
  "done" mark, in one transaction.
* ``ding_confirmed`` and ``card_read``: hooks the core calls after its own
  write (``DingService.on_confirmed``, ``ChatService.on_read``); the core
  never imports this plug-in. Written right after that write, not in its
  transaction.
* ``delivered``: a bus handler next to the hub's sees a card or notice in a
  notice conversation go to a holder with a live socket on this node; and the
  sync/history path hands one to a device (``enrich``). The server has no
  device receipt, so "delivered" means "written to one of the holder's live
  WebSockets, or returned to the holder's device by sync or history".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from cards.recipients import is_broadcast
from cards.service import FullStore, notice_owner
from imserver.metrics import Metrics
from imserver.store.records import CardRecord, OutboxEntry

log = logging.getLogger(__name__)

EVENT: Final = "event"
"""The outbox kind of app events (action callbacks are ``"action"``)."""

SUBSCRIPTION_TTL_S: Final = 2.0
"""How long a node trusts what it read of an app's subscription: a registration
change takes effect within this long, and a push to 10 000 holders reads the app once."""

READ_SCAN_LIMIT: Final = 200
"""Messages one ``read`` is checked against: a cursor jumping further reports the
first 200 cards and notices it passed (a notice conversation holds only the app's)."""

REMEMBERED: Final = 10_000
"""Recently enqueued event ids a node remembers, to skip the store for repeats
(every sync hands the same cards out again)."""

APP_KINDS: Final = ("card", "notice")
"""Message kinds an app delivers, that events are about."""

Enricher = Callable[[list[dict[str, Any]], str], Awaitable[None]]


def event_id(subject: str, event: str, key: str) -> str:
    """The id of ``event`` about ``subject`` (card or notice id) for ``key`` (holder or timer).

    Deterministic, so the outbox's unique (card, id) keeps one entry per
    thing reported, and the business side drops any repeat by this id.
    """
    digest = hashlib.sha256(f"{subject}\x00{event}\x00{key}".encode()).hexdigest()
    return "ev_" + digest[:32]


def event_entry(
    app_id: str,
    subject: dict[str, Any],
    event: str,
    key: str,
    at: int,
    **fields: Any,
) -> OutboxEntry:
    """The outbox entry (and payload) of one event.

    ``subject`` is ``{"card_id", "out_track_id"}`` for a card or ``{"notice_id"}``
    for a notice; ``fields`` are the event's own (``user``, ``conv``, ...).
    """
    sid = subject.get("card_id") or subject["notice_id"]
    eid = event_id(sid, event, key)
    payload = {
        "type": EVENT,
        "event": event,
        "event_id": eid,
        "app_id": app_id,
        **subject,
        "at": at,
        **fields,
    }
    return OutboxEntry(app_id, sid, eid, payload, kind=EVENT)


def card_subject(card: CardRecord) -> dict[str, Any]:
    return {"card_id": card.id, "out_track_id": card.out_track_id}


def app_of_conv(conv: str) -> str | None:
    """The app of a notice ``n:<app>:<user>`` or broadcast ``b:<app>:<id>`` conversation.

    None for any other: a card in a group produces no holder events.
    """
    if not conv.startswith(("n:", "b:")):
        return None
    parts = conv.split(":", 2)
    return parts[1] if len(parts) == 3 else None


class AppEvents:
    """Builds and enqueues app events; the hooks the core and the bus call."""

    def __init__(
        self,
        store: FullStore,
        metrics: Metrics,
        is_online: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._is_online = is_online
        self._clock = clock
        self._subscriptions: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Called after events join the outbox; the dispatcher sets it.
        self.wake: Callable[[], None] = lambda: None

    async def stop(self) -> None:
        """Let the delivered events still being written finish (they are short)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- subscriptions -------------------------------------------------------
    def _cached(self, app_id: str) -> tuple[str, ...] | None:
        hit = self._subscriptions.get(app_id)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def _may_want(self, app_id: str, event: str) -> bool:
        """False only when the cached subscription says no: the fast path's test."""
        events = self._cached(app_id)
        return events is None or event in events

    async def subscribed(self, app_id: str, event: str) -> bool:
        """Whether ``app_id`` (still registered) subscribed to ``event``."""
        events = self._cached(app_id)
        if events is None:
            app = await self._store.get_app(app_id)
            events = app.events if app is not None else ()
            self._subscriptions[app_id] = (time.monotonic() + SUBSCRIPTION_TTL_S, events)
        return event in events

    def _now(self) -> int:
        return int(self._clock() * 1000)

    # -- building and enqueueing ---------------------------------------------
    async def for_card(
        self, card: CardRecord, event: str, key: str, **fields: Any
    ) -> list[OutboxEntry]:
        """``[entry]`` if the card's app subscribed to ``event``, else ``[]`` (nothing stored)."""
        if not await self.subscribed(card.app_id, event):
            return []
        return [event_entry(card.app_id, card_subject(card), event, key, self._now(), **fields)]

    async def enqueue(self, entries: Sequence[OutboxEntry]) -> None:
        """Store ``entries`` (repeats skipped) and wake the dispatcher."""
        fresh = [e for e in entries if e.action_id not in self._recent]
        if not fresh:
            return
        added = await self._store.enqueue_events(fresh, self._now())
        for e in fresh:
            self._remember(e.action_id)
        if added:  # the callers pass one event name per call: count the new ones under it
            self._metrics.app_events.labels(fresh[0].payload["event"], "enqueued").inc(added)
            self.wake()

    def enqueued(self, entries: Sequence[OutboxEntry]) -> None:
        """Count (and remember) events another store write enqueued (a timer's)."""
        for e in entries:
            self._remember(e.action_id)
            self._metrics.app_events.labels(e.payload["event"], "enqueued").inc()
        if entries:
            self.wake()

    def _remember(self, eid: str) -> None:
        self._recent[eid] = None
        while len(self._recent) > REMEMBERED:
            self._recent.popitem(last=False)

    async def _subject(self, app_id: str, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """What a message of ``app_id`` is about: its card (if it is the app's) or notice."""
        if kind == "card":
            card_id = body.get("card_id")
            card = await self._store.get_card(card_id) if isinstance(card_id, str) else None
            # A card of app A never produces events for app B.
            return card_subject(card) if card is not None and card.app_id == app_id else None
        notice_id = body.get("notice_id")
        return {"notice_id": notice_id} if isinstance(notice_id, str) else None

    async def _holder_events(
        self,
        event: str,
        app_id: str,
        user: str,
        messages: Sequence[tuple[str, int, str, dict[str, Any]]],
        **fields: Any,
    ) -> None:
        """One ``event`` per (subject, ``user``) of ``messages``: (conv, seq, kind, body)."""
        if not messages or not await self.subscribed(app_id, event):
            return
        now = self._now()
        entries = []
        for conv, seq, kind, body in messages:
            subject = await self._subject(app_id, kind, body)
            if subject is not None:
                entries.append(
                    event_entry(
                        app_id, subject, event, user, now, user=user, conv=conv, seq=seq, **fields
                    )
                )
        await self.enqueue(entries)

    # -- hooks ---------------------------------------------------------------
    async def on_read(self, conv: str, user: str, before: int, after: int) -> None:
        """``ChatService.on_read``: the reader's cursor passed these cards and notices."""
        app_id = app_of_conv(conv)
        if app_id is None or after <= before or not await self.subscribed(app_id, "card_read"):
            return
        try:
            passed = await self._store.messages_after(
                conv, before, min(after - before, READ_SCAN_LIMIT)
            )
            sender = f"app:{app_id}"
            found = [
                (m.conv, m.seq, m.kind, m.body)
                for m in passed
                if m.seq <= after and m.kind in APP_KINDS and m.sender == sender and not m.recalled
            ]
            await self._holder_events("card_read", app_id, user, found)
        except Exception:  # the read itself succeeded; its event is what is lost
            log.exception("card_read events for %s in %s were not enqueued", user, conv)

    async def on_ding_confirmed(self, conv: str, seq: int, user: str, sender: str) -> None:
        """``DingService.on_confirmed``: ``user`` confirmed an app's DING card or notice."""
        if not sender.startswith("app:"):
            return
        app_id = sender[4:]
        if not await self.subscribed(app_id, "ding_confirmed"):
            return
        try:
            msg = await self._store.get_message(conv, seq)
            if msg is None or msg.kind not in APP_KINDS:
                return
            await self._holder_events(
                "ding_confirmed", app_id, user, [(conv, seq, msg.kind, msg.body)]
            )
        except Exception:  # the confirmation itself is stored; its event is what is lost
            log.exception(
                "ding_confirmed event for %s of %s seq %s was not enqueued", user, conv, seq
            )

    def on_deliver(self, payload: dict[str, Any]) -> None:
        """Bus handler for ``TOPIC_DELIVER``, next to the hub's: holders online here got it.

        Costs a few dict lookups for a delivery that is not an app's message in
        a notice conversation, and nothing more for an app that did not
        subscribe (once its subscription is cached).
        """
        parts = payload.get("variants") or [payload]
        frame = parts[0].get("frame") or {}
        if frame.get("event") != "message":
            return
        data = frame.get("data") or {}
        # A bus gap fill's payload has no top-level conv: the message has it.
        conv = payload.get("conv") or data.get("conv")
        app_id = app_of_conv(conv) if isinstance(conv, str) else None
        if app_id is None or not self._may_want(app_id, "delivered"):
            return
        if data.get("kind") not in APP_KINDS or data.get("sender") != f"app:{app_id}":
            return
        assert isinstance(conv, str)
        users = [u for part in parts for u in part["recipients"] if self._is_online(u)]
        if not users:
            return
        task = asyncio.get_running_loop().create_task(
            self._delivered(app_id, users, [(conv, int(data["seq"]), data["kind"], data["body"])])
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delivered(
        self,
        app_id: str,
        users: list[str],
        messages: list[tuple[str, int, str, dict[str, Any]]],
        via: str = "push",
    ) -> None:
        try:
            for user in users:
                await self._holder_events("delivered", app_id, user, messages, via=via)
        except Exception:
            log.exception("delivered events of app %s were not enqueued", app_id)

    def enricher(self, inner: Enricher) -> Enricher:
        """``inner`` (the cards' view enricher) that also reports cards and notices handed
        to the viewer's device by sync, history or a bus gap fill as ``delivered``."""

        async def enrich(messages: list[dict[str, Any]], viewer: str) -> None:
            await inner(messages, viewer)
            by_app: dict[str, list[tuple[str, int, str, dict[str, Any]]]] = {}
            for m in messages:
                app_id = app_of_conv(m.get("conv", ""))
                if (
                    app_id is not None
                    and (is_broadcast(m["conv"]) or notice_owner(m["conv"]) == viewer)
                    and m["kind"] in APP_KINDS
                    and m["sender"] == f"app:{app_id}"
                    and not m.get("recalled")
                    and self._may_want(app_id, "delivered")
                ):
                    by_app.setdefault(app_id, []).append(
                        (m["conv"], m["seq"], m["kind"], m["body"])
                    )
            for app_id, found in by_app.items():
                await self._delivered(app_id, [viewer], found, via="sync")

        return enrich
