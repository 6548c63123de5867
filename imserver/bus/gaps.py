"""Per-conversation seq tracking for a lossy bus: deliver each seq once, in order.

The Redis bus is a doorbell, not a source of truth: a published ``(conv,
seq)`` can be lost (reconnect, Redis restart), repeated, or overtaken (two
nodes publish seq 6 and seq 5; 6 arrives first). The store is the truth, and
every message is committed before it is published, so whenever a seq is heard
every seq before it is already in the store. This module decides, per
conversation, what to do with what was heard -- deliver it, drop it, or fill
the gap from the store first -- and runs a fill against a ``fetch`` function.
It does no I/O of its own (sans-I/O: ``fetch`` and ``emit`` are passed in), so
its guarantee is tested exhaustively with hypothesis in
``tests/unit/test_bus_gaps.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar


class Heard(enum.Enum):
    """What to do with a published seq."""

    DROP = "drop"  # already delivered (duplicate, late) or a running fill will fetch it
    DELIVER = "deliver"  # the next one: deliver the published payload as it is
    FILL = "fill"  # a gap before it: fetch from the store (which includes it) and deliver


class ConvSeq:
    """The last seq delivered to this node's sessions for one conversation.

    ``last`` starts at the store's ``last_seq`` when the node subscribes;
    anything at or below it the clients get from ``sync``.
    """

    __slots__ = ("filling", "last", "wanted")

    def __init__(self, last: int) -> None:
        self.last = last
        #: The highest seq heard of; a fill runs until ``last`` reaches it.
        self.wanted = last
        self.filling = False

    def heard(self, seq: int) -> Heard:
        """Record that ``seq`` was published; say what to do with its payload."""
        if seq <= self.last:
            return Heard.DROP
        self.wanted = max(self.wanted, seq)
        if self.filling:
            return Heard.DROP
        if seq == self.last + 1:
            self.last = seq
            return Heard.DELIVER
        self.filling = True
        return Heard.FILL

    def start_fill(self) -> bool:
        """Begin a fill not caused by a seq (after a reconnect); False if one is running."""
        if self.filling:
            return False
        self.filling = True
        return True

    def delivered(self, seq: int) -> None:
        """A filled message went out; later ones only."""
        if seq > self.last:
            self.last = seq

    def skip_to(self, seq: int) -> None:
        """Give up filling up to ``seq`` (backlog too long: the clients run ``sync``)."""
        self.last = max(self.last, seq)
        self.wanted = max(self.wanted, seq)

    def end_fill(self) -> None:
        self.filling = False


M = TypeVar("M")


@dataclass(slots=True, frozen=True)
class FillOutcome:
    delivered: int
    #: More than ``page * max_pages`` were missing: nothing past the bound was
    #: delivered; the caller tells the conversation's local sessions to ``sync``.
    overflowed: bool


async def fill(
    state: ConvSeq,
    fetch: Callable[[int, int], Awaitable[Sequence[M]]],
    seq_of: Callable[[M], int],
    emit: Callable[[Sequence[M]], Awaitable[None]],
    latest: Callable[[], Awaitable[int]],
    *,
    page: int,
    max_pages: int,
) -> FillOutcome:
    """Deliver from the store everything after ``state.last``, paged, in order.

    ``fetch(after, limit)`` reads up to ``limit`` stored items with seq >
    ``after``, ascending; ``emit`` delivers a page -- awaited *inside* the
    fill, so a seq heard while a page is still being delivered is left to the
    fill instead of overtaking it. The caller has set
    ``state.filling`` (``heard`` returned FILL, or ``start_fill``). Seqs heard
    meanwhile raise ``state.wanted`` and the fill keeps going until it has
    them. Past ``max_pages`` it stops and skips to the store's ``latest()``:
    an unbounded catch-up would stall every other conversation on this node.
    """
    delivered = 0
    pages = 0
    try:
        while True:
            items = await fetch(state.last, page)
            fresh = [m for m in items if seq_of(m) > state.last]
            if fresh:
                await emit(fresh)
                delivered += len(fresh)
                state.delivered(seq_of(fresh[-1]))
            pages += 1
            if len(items) < page and state.last >= state.wanted:
                return FillOutcome(delivered, False)
            if not items:  # the store has nothing newer than what was heard (yet)
                return FillOutcome(delivered, False)
            if pages >= max_pages:
                state.skip_to(await latest())
                return FillOutcome(delivered, True)
    finally:
        state.end_fill()
