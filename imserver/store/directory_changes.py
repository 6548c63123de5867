"""The directory change log's rules, for every backend: what one write job changed, numbered.

One row per unit or member ever synced, holding the sequence number of its
latest change (``directory_changes``), so the log never grows past the size
of the directory and ``directory.changes`` is one index range on ``seq``. A
removed unit or member keeps its row: that is how clients learn of removals.

Numbers are taken from the ``directory_change`` counter inside the same
write transaction as the change, so a reader never sees change ``n + 1``
committed before change ``n``. Each backend only runs the two statements
(``store/sqlite/directory_changes.py``, ``store/postgres/directory_changes.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from imserver.store.records import ChangeRow

UNIT: Final = "unit"
MEMBER: Final = "member"


class ChangeRecorder:
    """Collects what one write job changed, in the order of each item's latest change."""

    __slots__ = ("_changed",)

    def __init__(self) -> None:
        self._changed: dict[tuple[str, str], None] = {}  # insertion-ordered set

    def note(self, kind: str, ids: Iterable[str]) -> None:
        for id_ in ids:
            key = (kind, id_)
            self._changed.pop(key, None)  # a later change moves it to the end
            self._changed[key] = None

    def take(self) -> list[tuple[str, str]]:
        """The ``(kind, id)`` noted so far, oldest change first; the recorder is emptied."""
        changed = list(self._changed)
        self._changed = {}
        return changed


def numbered(changed: list[tuple[str, str]], last: int) -> list[tuple[str, str, int]]:
    """``(kind, id, seq)`` rows for ``changed`` once the counter was moved on to ``last``."""
    first = last - len(changed) + 1
    return [(kind, id_, first + i) for i, (kind, id_) in enumerate(changed)]


class ChangeFeedCursor:
    """``directory_cursor`` for a backend's address book, from its ``directory_changes``."""

    directory_changes: Callable[[int, int], Awaitable[tuple[list[ChangeRow], int]]]

    async def directory_cursor(self) -> int:
        """The number of the newest directory change (0: none yet)."""
        _, newest = await self.directory_changes(2**62, 1)
        return newest
