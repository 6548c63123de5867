"""Re-encrypting sealed values with the active key, in batches (``keys rotate``).

As in the SQLite store: each batch is its own write job, so the server keeps
serving, and rows already under the active key are left alone, so the command
can be interrupted and run again. Rows are locked ``FOR UPDATE`` while being
rewritten so a concurrent card save on another node is not overwritten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imserver.store.base import Rotator
from imserver.store.postgres.jobs import PgConn, PgJobs
from imserver.store.rotation import BATCH, rotate_all, rotate_batch
from imserver.store.rows import dump_json


class PgRotationMixin(PgJobs):
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

        async def batch(after: str) -> tuple[str | None, int]:
            async def job(conn: PgConn) -> tuple[str | None, int]:
                rows = await conn.fetch(select, after, BATCH)
                rewritten, last = rotate_batch(rows, rotate)
                if rewritten:
                    await conn.executemany(
                        update, [(dump_json(new), key) for key, new in rewritten]
                    )
                return last, len(rewritten)

            return await self._write(job)

        return await rotate_all(batch)
