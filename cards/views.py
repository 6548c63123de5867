"""Who sees what of a card, and the fan-out of its views to holders.

A card looks different to different people: sensitive fields are masked
unless the viewer holds ``pii:read``, and a holder with private data sees
only their own. Everything that hands a card to a person (a read, a sync,
a live ``card``/``message``/``todo`` event) goes through here, so that rule
lives in one place.
"""

from __future__ import annotations

from typing import Any

from cards.model import approval_from_json, render_view
from cards.private import for_viewer
from cards.store import FullStore
from imserver.bus.base import TOPIC_DELIVER, Bus
from imserver.masking import PII_READ
from imserver.metrics import Metrics
from imserver.protocol.frames import event_frame
from imserver.store.records import CardRecord, Message


class CardViews:
    def __init__(self, store: FullStore, bus: Bus, metrics: Metrics) -> None:
        self._store = store
        self._bus = bus
        self._metrics = metrics

    def view(
        self, card: CardRecord, reveal: bool = False, viewer: str | None = None
    ) -> dict[str, Any]:
        """What ``viewer`` sees of ``card``: only their own private data, if any."""
        return render_view(
            card_id=card.id,
            app_id=card.app_id,
            version=card.version,
            doc=for_viewer(card.doc, viewer),
            approval=approval_from_json(card.doc, card.approval),
            callback=card.callback,
            overdue=bool(card.approval.get("overdue")),
            escalation=card.approval.get("escalation"),
            reveal=reveal,
        )

    async def revealed(self, users: list[str] | tuple[str, ...]) -> set[str]:
        """Who among ``users`` may see sensitive values unmasked (scope ``pii:read``)."""
        return await self._store.users_with_scope(users, PII_READ) if users else set()

    async def enrich(self, messages: list[dict[str, Any]], viewer: str) -> None:
        """Attach each card message's latest view (sync and history show the current card)."""
        ids = [m["body"]["card_id"] for m in messages if m["kind"] == "card" and m["body"]]
        if not ids:
            return
        cards = await self._store.cards_by_ids(ids)
        reveal = bool(await self.revealed([viewer]))
        for m in messages:
            if m["kind"] == "card" and m["body"]:
                card = cards.get(m["body"]["card_id"])
                if card is not None:
                    m["body"] = {"card_id": card.id, "card": self.view(card, reveal, viewer)}

    async def _publish_views(
        self,
        card: CardRecord,
        users: list[str] | tuple[str, ...],
        build: Any,
        stored: Message | None = None,
    ) -> None:
        """Publish ``build(view)`` to ``users``: one masked and one clear variant at most.

        Each variant is encoded once for all its recipients; only cards with
        sensitive fields need the second one. A ``stored`` message goes out
        as one payload (``variants``, with its ``conv`` and ``seq``) so a
        networked bus sees one seq once and can fill it from the store.
        """
        clear: set[str] = set()
        if any(f["sensitive"] for f in card.doc["fields"]):
            clear = await self.revealed(users)
        private = card.doc.get("private") or {}  # a holder with private data: a view of their own
        masked = [u for u in users if u not in clear and u not in private]
        parts = [
            {"recipients": recipients, "frame": build(self.view(card, reveal))}
            for recipients, reveal in ((masked, False), (sorted(clear.difference(private)), True))
            if recipients
        ]
        parts += [
            {"recipients": [u], "frame": build(self.view(card, u in clear, u))}
            for u in sorted(set(users).intersection(private))
        ]
        if stored is not None:
            await self._bus.publish(
                TOPIC_DELIVER, {"variants": parts, "conv": stored.conv, "seq": stored.seq}
            )
            return
        for part in parts:
            await self._bus.publish(TOPIC_DELIVER, part)

    async def publish_card_message(
        self, card: CardRecord, msg: Message, recipients: tuple[str, ...]
    ) -> None:
        """A stored ``card`` message, with the card's view attached, to its readers."""
        wire = msg.to_wire()

        def frame(view: dict[str, Any]) -> dict[str, Any]:
            return event_frame("message", {**wire, "body": {"card_id": card.id, "card": view}})

        self._metrics.messages.labels("card").inc()
        await self._publish_views(card, recipients, frame, stored=msg)

    async def fan_out(self, card: CardRecord, holders: list[str] | None = None) -> None:
        """The card's new version as a ``card`` event to ``holders`` (default: all of them)."""
        users = holders if holders is not None else await self._store.card_holders(card.id)
        await self._publish_views(card, users, lambda view: event_frame("card", view))

    async def todo_changed(self, card_id: str, before: set[str], after: set[str]) -> None:
        """``todo`` events: pending for who may act now and did not before, done for the rest."""
        for users, pending in ((sorted(after - before), True), (sorted(before - after), False)):
            if users:
                await self._bus.publish(
                    TOPIC_DELIVER,
                    {
                        "recipients": users,
                        "frame": event_frame("todo", {"card_id": card_id, "pending": pending}),
                    },
                )
