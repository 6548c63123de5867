"""Per-conversation sequence tracking (pure, no I/O).

The server delivers messages *at least once*: after a reconnect a message may
arrive both as an event and in ``sync``, and events can overtake a sync page.
Each conversation's ``seq`` is gapless and starts at 1, so a client only needs:

* a **watermark** - the highest ``seq`` such that every ``seq`` at or below it
  is held; this is what goes into ``sync``'s ``since`` map, because asking for
  "everything after the watermark" can never skip a hole;
* a small set of seqs held **above** the watermark (arrived out of order after
  a gap). As the holes fill, the watermark advances across them and the set
  shrinks back to empty.

Keeping this separate from the network client makes the tricky ordering logic
testable without a server.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["SeqStatus", "SeqTracker"]


class SeqStatus(enum.Enum):
    """Outcome of offering one ``(conv, seq)`` to :meth:`SeqTracker.accept`.

    Truthiness is "is this message new?", so ``if tracker.accept(c, s):`` works
    for callers that only care about dedupe.
    """

    #: New, and contiguous: the watermark advanced over it.
    NEW = "new"
    #: Already held (at/below the watermark or in the held-above set): drop it.
    DUPLICATE = "duplicate"
    #: New, but seqs below it are missing: keep it and go fetch the hole.
    GAP = "gap"

    def __bool__(self) -> bool:
        return self is not SeqStatus.DUPLICATE


class SeqTracker:
    """Tracks which seqs are held per conversation; see the module docstring."""

    __slots__ = ("_above", "_watermark")

    def __init__(self) -> None:
        self._watermark: dict[str, int] = {}
        self._above: dict[str, set[int]] = {}

    def accept(self, conv: str, seq: int) -> SeqStatus:
        """Record ``seq`` as held in ``conv`` and classify it.

        Raises ``ValueError`` for ``seq < 1`` (seqs start at 1) so a corrupt
        frame cannot poison the watermark.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"seq must be an integer >= 1, got {seq!r}")
        mark = self._watermark.get(conv, 0)
        above = self._above.get(conv)
        if seq <= mark or (above is not None and seq in above):
            return SeqStatus.DUPLICATE
        if seq == mark + 1:
            mark = seq
            if above:
                # Walk the watermark across any seqs that were parked above it.
                while mark + 1 in above:
                    mark += 1
                    above.discard(mark)
                if not above:
                    del self._above[conv]
            self._watermark[conv] = mark
            return SeqStatus.NEW
        if above is None:
            above = self._above[conv] = set()
        above.add(seq)
        self._watermark.setdefault(conv, mark)
        return SeqStatus.GAP

    def contains(self, conv: str, seq: int) -> bool:
        """Is ``seq`` already held? (Read-only twin of ``accept``.)"""
        if seq <= self._watermark.get(conv, 0):
            return True
        above = self._above.get(conv)
        return above is not None and seq in above

    def last(self, conv: str) -> int:
        """Highest contiguous seq held (0 if none): the value to sync from."""
        return self._watermark.get(conv, 0)

    def highest(self, conv: str) -> int:
        """Highest seq held at all, including ones parked above a gap."""
        above = self._above.get(conv)
        mark = self._watermark.get(conv, 0)
        return max(mark, max(above)) if above else mark

    def has_gap(self, conv: str) -> bool:
        """True while some seq above the watermark is held, i.e. a hole exists."""
        return bool(self._above.get(conv))

    def missing(self, conv: str) -> list[int]:
        """The holes: seqs between the watermark and the highest held one."""
        above = self._above.get(conv)
        if not above:
            return []
        mark = self._watermark.get(conv, 0)
        return [s for s in range(mark + 1, max(above)) if s not in above]

    def advance(self, conv: str, seq: int) -> None:
        """Treat every seq up to ``seq`` as held, then absorb parked seqs.

        Used when the server is authoritative that nothing below ``seq`` will
        ever be delivered to us (e.g. a sync page that starts above the
        ``since`` we sent), so we stop asking for a hole that cannot be filled.
        Never moves the watermark backwards.
        """
        mark = max(self._watermark.get(conv, 0), seq)
        above = self._above.get(conv)
        if above:
            above.difference_update([s for s in above if s <= mark])
            while mark + 1 in above:
                mark += 1
                above.discard(mark)
            if not above:
                del self._above[conv]
        if mark > 0:
            self._watermark[conv] = mark

    def since(self) -> dict[str, int]:
        """The ``since`` map for a ``sync`` request: watermark per known conv.

        Conversations at 0 are omitted - the server treats unlisted ones as 0
        anyway, and it keeps the request frame small.
        """
        return {conv: mark for conv, mark in self._watermark.items() if mark > 0}

    def conversations(self) -> Iterable[str]:
        """Every conversation seen so far (with or without a watermark)."""
        return set(self._watermark) | set(self._above)

    def forget(self, conv: str) -> None:
        """Drop all state for ``conv`` (e.g. after leaving a group)."""
        self._watermark.pop(conv, None)
        self._above.pop(conv, None)

    def __repr__(self) -> str:
        return f"<SeqTracker {len(self._watermark)} convs, {len(self._above)} with gaps>"
