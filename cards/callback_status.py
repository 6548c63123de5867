"""A card's callback delivery status ("none", "pending", "ok", "failed"), kept on the card.

The dispatcher (``cards/callbacks.py``) reports what happened to a callback;
this records it on the card without making a new version, and tells the
holders when a delivery failed or stopped failing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from cards.store import FullStore
from cards.versions import MAX_SAVE_TRIES
from cards.views import CardViews

#: The name these lines have always had (docs/operations.md): operators filter on it.
log = logging.getLogger("cards.service")


class CallbackStatus:
    def __init__(self, store: FullStore, views: CardViews) -> None:
        self._store = store
        self._views = views

    async def set_state(self, card_id: str, state: str) -> None:
        """Record ``state`` ("failed", or "pending" on an admin retry) at the card's version."""
        await self._record(card_id, lambda: _constant(state))

    async def settled(self, card_id: str) -> None:
        """A callback was delivered: "ok", or "pending" while others are still owed."""

        async def state() -> str:
            return "pending" if await self._store.pending_callbacks(card_id) else "ok"

        await self._record(card_id, state)

    async def _record(self, card_id: str, state: Callable[[], Awaitable[str]]) -> None:
        """Store the delivery status without a new version; tell holders about failures.

        Why no version: the callback carried the version the decision made,
        and the app updates with it as ``if_version`` (docs/cards.md section
        6) — a version for "delivered" would make that 409 every time. A
        change to or from "failed" is fanned out (same version, new
        ``callback``) because holders must see a failure and its end; the
        usual "pending" → "ok" is not (the next read shows it). ``state`` is
        computed after the card is read, so an action saved in between moves
        the version, the guarded write misses, and the status is decided again.
        """
        for _ in range(MAX_SAVE_TRIES):
            card = await self._store.get_card(card_id)
            if card is None:
                return
            new = await state()
            if card.callback == new:
                return
            saved = await self._store.set_card_callback(card_id, new, card.version)
            if saved is not None:
                if "failed" in (card.callback, new):
                    await self._views.fan_out(saved)
                return
        log.warning("card %s kept changing; its callback status was not recorded", card_id)


async def _constant(state: str) -> str:
    return state
