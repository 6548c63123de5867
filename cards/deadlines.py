"""Card deadlines: reminders before ``due_at``, the overdue mark, escalation.

Timers are rows written with the card (``save_card``/``create_card``), so a
schedule made before a restart still fires after it. Escalation re-checks the
app's scope first (``CardService.escalation_outside_scope``). This loop claims due
timers with a lease, acts only if the card is still open, and marks each
timer done. Reminders and escalation notices are ``notice`` messages in the
person's notice conversation with the app: persistent, synced, and pushed
live like any message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cards.app_events import AppEvents
from cards.model import approval_from_json
from cards.policy import OPEN, actionable_by
from cards.service import CardService, FullStore, notice_conv, notice_owner
from imserver.due_loop import DueLoop
from imserver.services.chat import ChatService
from imserver.store.records import CardRecord, NewMessage, OutboxEntry, Timer

log = logging.getLogger(__name__)

BATCH = 100
#: ``cards.timer_lease_s``'s default: how long a claimed timer is this node's.
LEASE_MS = 60_000


class DeadlineScheduler:
    def __init__(
        self,
        store: FullStore,
        cards: CardService,
        chat: ChatService,
        clock: Callable[[], float] = time.time,
        *,
        lease_ms: int = LEASE_MS,
        events: AppEvents | None = None,
    ) -> None:
        """``lease_ms``: a claimed timer is this node's for so long. If the node dies
        meanwhile, another fires it once the lease runs out (``cards.timer_lease_s``):
        short enough to bound the delay, longer than a firing takes. ``events``: the
        app events a firing reports (``reminded``, ``overdue``, ``escalated``)."""
        self._store = store
        self._events = events
        self._cards = cards
        self._chat = chat
        self._clock = clock
        #: Public so tests (and operators' tooling) can read what is in force.
        self.lease_ms = lease_ms
        self._loop = DueLoop("deadlines", self.run_once, store.next_timer_due, clock)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def run_once(self) -> int:
        now = int(self._clock() * 1000)
        timers = await self._store.claim_timers(now, self.lease_ms, BATCH)
        for t in timers:
            try:
                events = await self._fire(t, now)
            except Exception:
                log.exception("timer %s (%s) for card %s failed", t.id, t.kind, t.card_id)
                continue  # the lease expires and the timer is tried again
            # The app events commit with the "done" mark: fired once, reported once.
            await self._store.finish_timer(t.id, events, now)
            if self._events is not None:
                self._events.enqueued(events)
        return len(timers)

    async def _fire(self, t: Timer, now: int) -> list[OutboxEntry]:
        """Act on the timer; the app events to report with its "done" mark."""
        card = await self._store.get_card(t.card_id)
        if card is None:
            return []
        approval = approval_from_json(card.doc, card.approval)
        if approval.state != OPEN:
            return []
        title = card.doc["title"]
        pending = actionable_by(approval)
        if t.kind == "remind":
            minutes = max(1, (card.doc["due_at"] - now) // 60_000)
            await self._notify(card, pending, f"待办提醒：{title}", f"请在 {minutes} 分钟内处理。")
            return await self._event(card, "reminded", t, pending)
        if t.kind == "overdue":
            await self._cards.apply_update(card, {}, check_version=False, mark_overdue=True)
            await self._notify(
                card, pending, f"已逾期：{title}", "该待办已超过办理期限，请尽快处理。"
            )
            return await self._event(card, "overdue", t, pending)
        if t.kind == "escalate":
            outcome = await self._escalate(card, pending, now)
            if outcome is not None:
                return await self._event(card, "escalated", t, pending, **outcome)
        return []

    async def _event(
        self, card: CardRecord, event: str, t: Timer, pending: tuple[str, ...], **fields: object
    ) -> list[OutboxEntry]:
        """The app event of this firing (keyed by the timer: a re-fire is the same event)."""
        if self._events is None:
            return []
        return await self._events.for_card(
            card,
            event,
            f"timer:{t.id}",
            due_at=card.doc.get("due_at"),
            pending=list(pending),
            **fields,
        )

    async def _notify(
        self, card: CardRecord, users: tuple[str, ...], title: str, text: str
    ) -> None:
        app = await self._store.get_app(card.app_id)
        name = (app.name if app else "") or card.app_id
        now = int(self._clock() * 1000)
        body = {
            "title": title,
            "text": text,
            "urgent": False,
            "app_id": card.app_id,
            "card_id": card.id,
        }
        messages = [
            NewMessage(
                notice_conv(card.app_id, u), f"app:{card.app_id}", "app", "notice", body, now
            )
            for u in users
        ]
        convs = [(notice_conv(card.app_id, u), u, name) for u in users]
        for msg in await self._store.deliver_notice(messages, convs, now):
            await self._chat.publish_message(msg, (notice_owner(msg.conv),))

    async def _escalate(
        self, card: CardRecord, pending: tuple[str, ...], now: int
    ) -> dict[str, str] | None:
        """Hand the overdue card to ``escalate_to``: they hold it and are told why.

        Only if the app may still reach them: otherwise nobody new gets the
        card, and the refusal is logged, audited and shown on the card.
        Returns what the ``escalated`` event reports (None: no escalation target).
        """
        boss = card.doc.get("escalate_to")
        if not boss or not await self._store.existing_users([boss]):
            return None
        if await self._cards.escalation_outside_scope(card):
            log.warning(
                "card %s of app %s: escalation to %s refused, outside the app's scope",
                card.id,
                card.app_id,
                boss,
            )
            await self._cards.refuse_escalation(card, "out_of_scope")
            return {"to": boss, "state": "refused", "reason": "out_of_scope"}
        app = await self._store.get_app(card.app_id)
        name = (app.name if app else "") or card.app_id
        conv = notice_conv(card.app_id, boss)
        msg = await self._store.add_card_holder(
            card.id,
            boss,
            NewMessage(conv, f"app:{card.app_id}", "app", "card", {"card_id": card.id}, now),
            (conv, boss, name),
        )
        if msg is not None:
            fresh = await self._store.get_card(card.id)
            await self._cards.publish_card_message(fresh or card, msg, (boss,))
        waiting = "、".join(pending) or "—"
        await self._notify(
            card, (boss,), f"督办：{card.doc['title']}", f"已逾期未办理，待办理人：{waiting}。"
        )
        return {"to": boss, "state": "escalated"}
