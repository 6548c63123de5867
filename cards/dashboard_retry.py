"""The dashboard's retry button, as the cards plug-in performs it.

The core's dashboard (``imserver/dashboard``) must not import ``cards/``; the
composition root hands it this function instead. It does what the admin
route ``POST /admin/v1/callbacks/{card_id}/{action_id}/retry`` does: the
failed delivery is due again, audited, the card shows it pending, and the
dispatcher wakes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from cards.service import CardService, FullStore
from imserver.audit_trail import AuditTrail
from imserver.errors import NoSuchCallback


def retry_callback_hook(
    cards: CardService, store: FullStore, trail: AuditTrail, wake: Callable[[], None]
) -> Callable[[str, str, str], Awaitable[dict[str, Any]]]:
    async def retry(card_id: str, action_id: str, actor: str) -> dict[str, Any]:
        item = await store.get_callback(card_id, action_id)
        if item is None:
            raise NoSuchCallback("no such callback")
        await store.retry_callback(item.id, int(time.time() * 1000))
        await trail.record(
            actor, "admin.callback_retry", item.card_id, {"action_id": item.action_id}
        )
        await cards.set_callback_state(item.card_id, "pending")
        wake()
        return {"card_id": item.card_id, "action_id": item.action_id, "state": "pending"}

    return retry
