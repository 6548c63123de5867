"""Driving users over real WebSockets: wait for a card, act on it, wait for its state.

Thin waits over the SDK client's event stream, shared by every flow's
scenario. ``Client.next_event`` consumes what it skips, so a scenario waits
for versions in the order they are made.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from imserver_sdk import Client, Event

TIMEOUT_S = 15.0


async def card_message(c: Client, track: str, within_s: float = TIMEOUT_S) -> dict[str, Any]:
    """The card view of the first card message for ``out_track_id`` ``track``."""
    ev = await c.next_event(
        "message",
        predicate=lambda e: (
            e.data.get("kind") == "card" and e.data["body"]["card"].get("out_track_id") == track
        ),
        timeout=within_s,
    )
    view: dict[str, Any] = ev.data["body"]["card"]
    return view


async def card_message_where(
    c: Client, pred: Callable[[dict[str, Any]], bool], within_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """The card view of the first card message whose view satisfies ``pred``."""
    ev = await c.next_event(
        "message",
        predicate=lambda e: e.data.get("kind") == "card" and pred(e.data["body"]["card"]),
        timeout=within_s,
    )
    view: dict[str, Any] = ev.data["body"]["card"]
    return view


async def notice_message(c: Client, title_prefix: str, within_s: float = TIMEOUT_S) -> str:
    """The title of the first notice message (reminder, 督办 …) starting with ``title_prefix``."""
    ev = await c.next_event(
        "message",
        predicate=lambda e: (
            e.data.get("kind") == "notice"
            and str(e.data["body"].get("title", "")).startswith(title_prefix)
        ),
        timeout=within_s,
    )
    return str(ev.data["body"]["title"])


async def all_seen(
    c: Client, wanted: dict[str, Callable[[Event], bool]], within_s: float = TIMEOUT_S
) -> None:
    """Wait until an event matching each predicate arrived, in whatever order they come.

    For events from two sources (the server's overdue mark and the bot's DING)
    whose order is not defined: waiting for one first would discard the other.
    """
    left = dict(wanted)
    async with asyncio.timeout(within_s):
        while left:
            ev = await c.next_event(timeout=within_s)
            for name, pred in list(left.items()):
                if pred(ev):
                    del left[name]


def is_notice(prefix: str) -> Callable[[Event], bool]:
    """An event predicate: a notice message whose title starts with ``prefix``."""
    return lambda e: (
        e.name == "message"
        and e.data.get("kind") == "notice"
        and str(e.data["body"].get("title", "")).startswith(prefix)
    )


def is_overdue(card_id: str) -> Callable[[Event], bool]:
    """An event predicate: a version of ``card_id`` marked overdue."""
    return lambda e: (
        e.name == "card" and e.data.get("card_id") == card_id and e.data.get("overdue") is True
    )


def field_value(view: dict[str, Any], label: str) -> Any:
    """The value of a card field by its label (``None`` if absent)."""
    return next((f.get("value") for f in view.get("fields", []) if f.get("label") == label), None)


async def card_reaching(
    c: Client, card_id: str, pred: Callable[[dict[str, Any]], bool], within_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """The first new version of ``card_id`` this client gets that satisfies ``pred``."""
    ev = await c.next_event(
        "card", predicate=lambda e: e.data["card_id"] == card_id and pred(e.data), timeout=within_s
    )
    view: dict[str, Any] = ev.data
    return view


async def act(c: Client, card_id: str, action: str, **inputs: str) -> dict[str, Any]:
    """Click a card button (a fresh ``action_id``, as a real client makes per click)."""
    answer: dict[str, Any] = await c.request(
        "card.act", card_id=card_id, action=action, action_id=uuid.uuid4().hex, inputs=inputs
    )
    return answer


async def until(pred: Callable[[], bool], within_s: float = TIMEOUT_S) -> bool:
    """Poll ``pred`` until it holds; ``False`` if it never did within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


class Clients:
    """One connected client per user, opened on first use, closed together."""

    def __init__(self, connect: Callable[[str], Any]) -> None:
        self._connect = connect
        self._open: dict[str, Client] = {}

    async def get(self, user: str) -> Client:
        if user not in self._open:
            self._open[user] = await self._connect(user)
        return self._open[user]

    async def close(self) -> None:
        for c in self._open.values():
            await c.close()
        self._open.clear()
