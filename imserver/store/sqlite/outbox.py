"""SQLite side of the callback outbox: claims with a lease, outcomes, retries, app events.

Entries are written by the card store in the transaction of the version
that caused them (``insert_outbox``); this is the dispatcher's side.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

import orjson

from imserver.store.records import OutboxEntry, OutboxItem
from imserver.store.rows import OUTBOX_COLUMNS, outbox_from_row
from imserver.store.sqlite.jobs import SqliteJobs


def insert_outbox(conn: sqlite3.Connection, entries: Iterable[OutboxEntry], now: int) -> int:
    """Outbox rows due now; a repeat of (card, action/event id) is ignored. Returns how many new."""
    added = 0
    for o in entries:
        added += conn.execute(
            "INSERT OR IGNORE INTO outbox (app_id, card_id, action_id, payload, state,"
            " attempts, next_at, created_at, kind) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (o.app_id, o.card_id, o.action_id, orjson.dumps(o.payload), now, now, o.kind),
        ).rowcount
    return added


class SqliteOutboxMixin(SqliteJobs):
    """The callback dispatcher's queries; needs ``_write``/``_read`` from the store."""

    async def claim_callbacks(self, now: int, lease_ms: int, limit: int) -> list[OutboxItem]:
        """Due pending callbacks, leased so no other worker sends them meanwhile."""

        def job(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND next_at <= ?"
                " AND lease_until <= ? ORDER BY next_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET lease_until = ? WHERE id = ?",
                [(now + lease_ms, r[0]) for r in rows],
            )
            return [outbox_from_row(r) for r in rows]

        return await self._write(job)

    async def next_callback_due(self) -> int | None:
        def job(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT min(max(next_at, lease_until)) FROM outbox WHERE state = 'pending'"
            ).fetchone()
            return None if row[0] is None else int(row[0])

        return await self._read(job)

    async def work_backlog(self) -> tuple[int, int, int]:
        """(outbox pending, outbox failed, timers not yet fired): the metrics' gauges."""

        def job(conn: sqlite3.Connection) -> tuple[int, int, int]:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending'),"
                " (SELECT count(*) FROM outbox WHERE state = 'failed'),"
                " (SELECT count(*) FROM timers WHERE done = 0)"
            ).fetchone()
            return int(row[0]), int(row[1]), int(row[2])

        return await self._read(job)

    async def finish_callback(
        self, item_id: int, *, state: str, attempts: int, next_at: int, error: str
    ) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, lease_until = 0,"
                " last_error = ? WHERE id = ?",
                (state, attempts, next_at, error[:500], item_id),
            )

        await self._write(job)

    async def get_callback(self, card_id: str, action_id: str) -> OutboxItem | None:
        def job(conn: sqlite3.Connection) -> OutboxItem | None:
            row = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE card_id = ? AND action_id = ?",
                (card_id, action_id),
            ).fetchone()
            return None if row is None else outbox_from_row(row)

        return await self._read(job)

    async def list_callbacks(self, state: str, limit: int) -> list[OutboxItem]:
        def job(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = ? ORDER BY id LIMIT ?",
                (state, limit),
            )
            return [outbox_from_row(r) for r in rows]

        return await self._read(job)

    async def pending_callbacks(self, card_id: str) -> int:
        """Pending action callbacks of the card (app events never count: docs/cards.md)."""

        def job(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute(
                "SELECT count(*) FROM outbox WHERE card_id = ? AND state = 'pending'"
                " AND kind = 'action'",
                (card_id,),
            ).fetchone()
            return int(n)

        return await self._read(job)

    async def enqueue_events(self, entries: Sequence[OutboxEntry], now: int) -> int:
        """Add app events to the outbox; one already there (same card, ``event_id``) is kept."""
        rows = list(entries)

        def job(conn: sqlite3.Connection) -> int:
            return insert_outbox(conn, rows, now)

        return await self._write(job) if rows else 0

    async def retry_callback(self, item_id: int, now: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?, lease_until = 0"
                " WHERE id = ?",
                (now, item_id),
            )

        await self._write(job)
