"""The directory change log on SQLite: numbering and storing what one write job changed.

The rules (what is noted, how it is numbered) are ``store/directory_changes.py``;
the store has one writer, so numbers are handed out in commit order.
"""

from __future__ import annotations

import sqlite3

from imserver.store.directory_changes import ChangeRecorder, numbered


class SqliteChangeRecorder(ChangeRecorder):
    """A :class:`ChangeRecorder` whose changes are stored on a SQLite connection."""

    __slots__ = ()

    def flush(self, conn: sqlite3.Connection) -> int:
        """Store the changes with fresh sequence numbers; the number of changes."""
        changed = self.take()
        if not changed:
            return 0
        (last,) = conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'directory_change' RETURNING value",
            (len(changed),),
        ).fetchone()
        conn.executemany(
            "INSERT INTO directory_changes (kind, id, seq) VALUES (?, ?, ?)"
            " ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq",
            numbered(changed, int(last)),
        )
        return len(changed)
