"""Re-encrypting sealed values with the active key (``python -m imserver keys rotate``).

Runs in batches, each its own write job, so a running server keeps serving;
rows already sealed with the active key are left alone, so the command can be
interrupted and run again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

Job = Callable[[sqlite3.Connection], Any]
BATCH = 500


class Rotator(Protocol):
    def rotate_profile(self, user: str, stored: dict[str, str]) -> dict[str, str] | None: ...

    def rotate_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any] | None: ...


class SqliteRotationMixin:
    _write: Callable[[Job], Awaitable[Any]]

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
        after = ""
        total = 0
        while True:

            def job(conn: sqlite3.Connection, after: str = after) -> tuple[str | None, int]:
                rows = conn.execute(select, (after, BATCH)).fetchall()
                changed = 0
                for key, raw in rows:
                    new = rotate(key, orjson.loads(raw))
                    if new is not None:
                        conn.execute(update, (orjson.dumps(new), key))
                        changed += 1
                return (rows[-1][0] if len(rows) == BATCH else None), changed

            last: str | None
            changed: int
            last, changed = await self._write(job)
            total += changed
            if last is None:
                return total
            after = last
