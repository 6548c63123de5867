"""The directory change log on PostgreSQL: numbering what one write job changed.

Same rows as the SQLite store (``store/sqlite/directory_changes.py``). The
``directory_change`` counter row is locked by the ``UPDATE`` until the job's
transaction commits, so across nodes change numbers are handed out in commit
order and a reader never sees change ``n + 1`` before change ``n``.
"""

from __future__ import annotations

from imserver.store.postgres.jobs import PgConn
from imserver.store.sqlite.directory_changes import ChangeRecorder


class PgChangeRecorder(ChangeRecorder):
    """A :class:`ChangeRecorder` whose changes are stored on a PostgreSQL connection."""

    __slots__ = ()

    async def store(self, conn: PgConn) -> int:
        """Store the changes with fresh sequence numbers; the number of changes."""
        changed = list(self._changed)
        if not changed:
            return 0
        last = await conn.fetchval(
            "UPDATE counters SET value = value + $1 WHERE name = 'directory_change'"
            " RETURNING value",
            len(changed),
        )
        first = int(last) - len(changed) + 1
        await conn.executemany(
            "INSERT INTO directory_changes (kind, id, seq) VALUES ($1, $2, $3)"
            " ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq",
            [(kind, id_, first + i) for i, (kind, id_) in enumerate(changed)],
        )
        self._changed = {}
        return len(changed)
