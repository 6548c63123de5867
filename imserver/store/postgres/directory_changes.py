"""The directory change log on PostgreSQL: numbering and storing what one write job changed.

The rules (what is noted, how it is numbered) are ``store/directory_changes.py``.
The ``directory_change`` counter row is locked by the ``UPDATE`` until the job's
transaction commits, so across nodes change numbers are handed out in commit
order and a reader never sees change ``n + 1`` before change ``n``.
"""

from __future__ import annotations

from imserver.store.directory_changes import ChangeRecorder, numbered
from imserver.store.postgres.jobs import PgConn


class PgChangeRecorder(ChangeRecorder):
    """A :class:`ChangeRecorder` whose changes are stored on a PostgreSQL connection."""

    __slots__ = ()

    async def store(self, conn: PgConn) -> int:
        """Store the changes with fresh sequence numbers; the number of changes."""
        changed = self.take()
        if not changed:
            return 0
        last = await conn.fetchval(
            "UPDATE counters SET value = value + $1 WHERE name = 'directory_change'"
            " RETURNING value",
            len(changed),
        )
        await conn.executemany(
            "INSERT INTO directory_changes (kind, id, seq) VALUES ($1, $2, $3)"
            " ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq",
            numbered(changed, int(last)),
        )
        return len(changed)
