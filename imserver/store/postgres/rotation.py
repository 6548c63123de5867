"""Re-encrypting sealed values with the active key, in batches (``keys rotate``).

As in the SQLite store: each batch is its own write job, so the server keeps
serving, and rows already under the active key are left alone, so the command
can be interrupted and run again. Rows are locked ``FOR UPDATE`` while being
rewritten so a concurrent card save on another node is not overwritten.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from imserver.store.postgres.jobs import PgConn, PgJob
from imserver.store.rows import dump_json, load_json
from imserver.store.sqlite.rotation import BATCH, Rotator


class PgRotationMixin:
    _write: Callable[[PgJob], Awaitable[Any]]

    async def rotate_sealed(self, rotator: Rotator) -> tuple[int, int]:
        """(profiles, cards) re-encrypted with the active key."""
        profiles = await self._rotate_table("users", "profile", rotator.rotate_profile)
        cards = await self._rotate_table("cards", "doc", rotator.rotate_doc)
        return profiles, cards

    async def _rotate_table(
        self, table: str, column: str, rotate: Callable[[str, Any], Any | None]
    ) -> int:
        select = f"SELECT id, {column} FROM {table} WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE"
        update = f"UPDATE {table} SET {column} = $1 WHERE id = $2"
        after = ""
        total = 0
        while True:

            async def job(conn: PgConn, after: str = after) -> tuple[str | None, int]:
                rows = await conn.fetch(select, after, BATCH)
                changed = 0
                for key, raw in rows:
                    new = rotate(key, load_json(raw))
                    if new is not None:
                        await conn.execute(update, dump_json(new), key)
                        changed += 1
                return (rows[-1][0] if len(rows) == BATCH else None), changed

            last: str | None
            changed: int
            last, changed = await self._write(job)
            total += changed
            if last is None:
                return total
            after = last
