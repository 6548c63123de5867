"""Payloads for messages a node read from the store to fill a gap.

Most messages are the same for every reader, so one payload serves all the
conversation's local members. A card message carries the card's current
view, masked or not per viewer, so those are built per viewer with the
services' own wire function (``ChatService.wire_for``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from imserver.protocol.frames import event_frame
from imserver.store.records import Message

#: Builds the ``deliver`` payloads for stored messages read during a gap fill,
#: for ``users`` (the conversation's local members); card messages need their
#: current view per viewer, which only the services know.
Refill = Callable[[str, Sequence[Message], frozenset[str]], Awaitable[list[dict[str, Any]]]]


async def plain_refill(
    conv: str, messages: Sequence[Message], users: frozenset[str]
) -> list[dict[str, Any]]:
    """Each message as its ``message`` event, for all of ``users``."""
    del conv
    recipients = sorted(users)
    return [
        {"recipients": recipients, "frame": event_frame("message", m.to_wire())} for m in messages
    ]


Wire = Callable[[list[Message], str], Awaitable[list[dict[str, Any]]]]


def viewer_refill(wire: Wire) -> Refill:
    """A :data:`Refill` that builds card messages per viewer with ``wire``."""

    async def refill(
        conv: str, messages: Sequence[Message], users: frozenset[str]
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for message in messages:
            if message.kind != "card":
                out.extend(await plain_refill(conv, [message], users))
                continue
            for user in sorted(users):
                (wired,) = await wire([message], user)
                out.append({"recipients": [user], "frame": event_frame("message", wired)})
        return out

    return refill
