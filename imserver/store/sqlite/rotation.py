"""Re-encrypting sealed values with the active key (``python -m imserver keys rotate``).

The batches and what each re-seals are ``store/rotation.py``; this runs them
as write jobs on the store's writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from imserver.store.base import Rotator
from imserver.store.rotation import BATCH, rotate_all, rotate_batch
from imserver.store.sqlite.jobs import SqliteJobs


class SqliteRotationMixin(SqliteJobs):
    async def rotate_sealed(self, rotator: Rotator) -> tuple[int, int]:
        """(profiles, cards) re-encrypted with the active key."""
        profiles = await self._rotate_table(
            "SELECT id, profile FROM users WHERE id > ? ORDER BY id LIMIT ?",
            "UPDATE users SET profile = ? WHERE id = ?",
            rotator.rotate_profile,
        )
        cards = await self._rotate_table(
            "SELECT id, doc FROM cards WHERE id > ? ORDER BY id LIMIT ?",
            "UPDATE cards SET doc = ? WHERE id = ?",
            rotator.rotate_doc,
        )
        return profiles, cards

    async def _rotate_table(
        self, select: str, update: str, rotate: Callable[[str, Any], Any | None]
    ) -> int:
        async def batch(after: str) -> tuple[str | None, int]:
            def job(conn: sqlite3.Connection) -> tuple[str | None, int]:
                rows = conn.execute(select, (after, BATCH)).fetchall()
                rewritten, last = rotate_batch(rows, rotate)
                conn.executemany(update, [(orjson.dumps(new), key) for key, new in rewritten])
                return last, len(rewritten)

            return await self._write(job)

        return await rotate_all(batch)
