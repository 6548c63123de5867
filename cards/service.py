"""Cards: the one object the rest of the server holds for everything about cards.

``CardService`` builds the card parts from the composition root's pieces and
answers for them, so callers (routes, the callback dispatcher, deadlines,
templates, the WebSocket requests) depend on one name:

- ``cards/views.py``: who sees what of a card, and the fan-out to holders;
- ``cards/recipients.py``: a push's or notice's ``to``, resolved and scope-checked;
- ``cards/app_cards.py``: an app's push, read and update (and every other update);
- ``cards/acts.py``: a holder's act (the card action path), read, todo, sync;
- ``cards/callback_status.py``: the callback delivery status kept on the card;
- ``cards/notices.py``: work notices and their DING status.

``FullStore``, ``notice_conv``, ``notice_owner`` and ``readers`` are imported
from here by other modules, so they stay importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cards.acts import CardActs
from cards.app_cards import AppCards
from cards.callback_status import CallbackStatus
from cards.notices import Notices
from cards.recipients import Recipients, notice_conv, notice_owner, readers
from cards.scope import AppScope
from cards.store import FullStore
from cards.views import CardViews
from imserver.bus.base import Bus
from imserver.config import Config
from imserver.metrics import Metrics
from imserver.services.caller import Caller
from imserver.services.chat import ChatService
from imserver.services.membership import MembershipCache
from imserver.store.records import AppRecord, AuditEntry, CardRecord, Message

__all__ = ["CardService", "FullStore", "notice_conv", "notice_owner", "readers"]


class CardService:
    def __init__(
        self,
        store: FullStore,
        bus: Bus,
        members: MembershipCache,
        chat: ChatService,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: The card limits; templates render under the same ones (cards/template_service.py).
        self.limits = config.cards
        ding_interval_ms = int(config.chat.ding_interval_s * 1000)
        #: Every principal an app names is checked against its scope here.
        self.scope = AppScope(store)
        #: Called after an action joins the outbox; the dispatcher sets it.
        self.wake_callbacks: Callable[[], None] = lambda: None
        self.views = CardViews(store, bus, metrics)
        recipients = Recipients(store, members, self.scope, config.cards.max_recipients)
        self.app_cards = AppCards(
            store, chat, self.views, recipients, self.scope, config.cards, ding_interval_ms, clock
        )
        self.acts = CardActs(
            store,
            chat,
            self.views,
            self.scope,
            metrics,
            ding_interval_ms,
            lambda: self.wake_callbacks(),  # read at each act: the dispatcher sets it later
            clock,
        )
        self.callback_status = CallbackStatus(store, self.views)
        self.notices = Notices(store, chat, recipients, config.cards, ding_interval_ms, clock)

    # -- views (cards/views.py) ------------------------------------------------
    def view(
        self, card: CardRecord, reveal: bool = False, viewer: str | None = None
    ) -> dict[str, Any]:
        """What ``viewer`` sees of ``card``: only their own private data, if any."""
        return self.views.view(card, reveal, viewer)

    async def enrich(self, messages: list[dict[str, Any]], viewer: str) -> None:
        """Attach each card message's latest view (sync and history show the current card)."""
        await self.views.enrich(messages, viewer)

    async def publish_card_message(
        self, card: CardRecord, msg: Message, recipients: tuple[str, ...]
    ) -> None:
        """A stored ``card`` message, with the card's view attached, to its readers."""
        await self.views.publish_card_message(card, msg, recipients)

    # -- apps: push, read, update (cards/app_cards.py) -------------------------
    async def push(self, app: AppRecord, body: Any) -> dict[str, Any]:
        return await self.app_cards.push(app, body)

    async def get_for_app(self, app: AppRecord, out_track_id: str) -> dict[str, Any]:
        return await self.app_cards.get_for_app(app, out_track_id)

    async def update(self, app: AppRecord, out_track_id: str, body: Any) -> dict[str, Any]:
        return await self.app_cards.update(app, out_track_id, body)

    async def apply_update(
        self,
        card: CardRecord,
        body: Any,
        *,
        check_version: bool,
        callback: str | None = None,
        mark_overdue: bool = False,
        escalation: dict[str, Any] | None = None,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any]:
        """Apply an app's update (from PATCH or a callback answer) and fan it out."""
        return await self.app_cards.apply_update(
            card,
            body,
            check_version=check_version,
            callback=callback,
            mark_overdue=mark_overdue,
            escalation=escalation,
            audit=audit,
        )

    async def escalation_outside_scope(self, card: CardRecord) -> bool:
        """Whether the card's ``escalate_to`` is now outside its app's scope."""
        return await self.app_cards.escalation_outside_scope(card)

    async def refuse_escalation(self, card: CardRecord, reason: str) -> None:
        """Record on the card (and in the audit log) that its escalation was refused."""
        await self.app_cards.refuse_escalation(card, reason)

    # -- callback delivery status (cards/callback_status.py) -------------------
    async def set_callback_state(self, card_id: str, state: str) -> None:
        """Record ``state`` ("failed", or "pending" on an admin retry) at the card's version."""
        await self.callback_status.set_state(card_id, state)

    async def callback_settled(self, card_id: str) -> None:
        """A callback was delivered: "ok", or "pending" while others are still owed."""
        await self.callback_status.settled(card_id)

    # -- work notices (cards/notices.py) ---------------------------------------
    async def notice(self, app: AppRecord, body: Any) -> dict[str, Any]:
        return await self.notices.send(app, body)

    async def notice_ding_status(self, app: AppRecord, notice_id: str) -> dict[str, Any]:
        return await self.notices.ding_status(app, notice_id)

    # -- people: act, read, todo (cards/acts.py) -------------------------------
    async def get(self, caller: Caller, card_id: str) -> dict[str, Any]:
        return await self.acts.get(caller, card_id)

    async def act(
        self,
        caller: Caller,
        card_id: str,
        action: str,
        action_id: str,
        inputs: Any,
        target: Any = None,
    ) -> dict[str, Any]:
        """One person's act: a decision, or an OA workflow act (docs/cards.md "OA actions")."""
        return await self.acts.act(caller, card_id, action, action_id, inputs, target)

    async def todo(self, caller: Caller, limit: int = 100) -> dict[str, Any]:
        return await self.acts.todo(caller, limit)

    async def changed_since(self, caller: Caller, cursor: int, limit: int) -> dict[str, Any]:
        return await self.acts.changed_since(caller, cursor, limit)
