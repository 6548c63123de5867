"""The directory change log: which units and members changed, in order.

One row per unit or member ever synced, holding the sequence number of its
latest change (``directory_changes``), so the log never grows past the size
of the directory and ``directory.changes`` is one index range on ``seq``. A
removed unit or member keeps its row: that is how clients learn of removals.

Numbers are taken from the ``directory_change`` counter inside the same
write transaction as the change, and the store has one writer, so a reader
never sees change ``n + 1`` committed before change ``n``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

UNIT = "unit"
MEMBER = "member"


class ChangeRecorder:
    """Collects what one write job changed; :meth:`flush` numbers and stores it."""

    __slots__ = ("_changed",)

    def __init__(self) -> None:
        self._changed: dict[tuple[str, str], None] = {}  # insertion-ordered set

    def note(self, kind: str, ids: Iterable[str]) -> None:
        for id_ in ids:
            key = (kind, id_)
            self._changed.pop(key, None)  # a later change moves it to the end
            self._changed[key] = None

    def flush(self, conn: sqlite3.Connection) -> int:
        """Store the changes with fresh sequence numbers; the number of changes."""
        if not self._changed:
            return 0
        (last,) = conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'directory_change' RETURNING value",
            (len(self._changed),),
        ).fetchone()
        first = int(last) - len(self._changed) + 1
        conn.executemany(
            "INSERT INTO directory_changes (kind, id, seq) VALUES (?, ?, ?)"
            " ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq",
            [(kind, id_, first + i) for i, (kind, id_) in enumerate(self._changed)],
        )
        count = len(self._changed)
        self._changed = {}
        return count
