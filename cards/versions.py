"""Saving a new card version: what every writer of a card version shares.

Pushes, updates, acts and delivery statuses all write with an optimistic
version check (``save_card``): on a miss they read the card again and decide
again, at most ``MAX_SAVE_TRIES`` times. The stored approval state carries
server-kept flags (``overdue``, ``escalation``) next to the state machine's.
"""

from __future__ import annotations

from typing import Any

from cards.model import approval_to_json
from cards.policy import ApprovalState

MAX_SAVE_TRIES = 8


def with_flags(
    s: ApprovalState, *, overdue: bool, escalation: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The stored approval state plus server-kept flags (``overdue``, ``escalation``)."""
    data = approval_to_json(s)
    if overdue:
        data["overdue"] = True
    if escalation is not None:
        data["escalation"] = escalation
    return data
