"""SQLite side of card deadlines (timers) and DING confirmations.

A mixin of :class:`imserver.store.sqlite.SqliteStore`. Timers are rows, so a
reminder or an escalation scheduled before a restart still fires after it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from imserver.store.records import DingDue, DingStatus, Message, NewMessage, OutboxEntry, Timer
from imserver.store.rows import confirmed_split, ding_status_from_rows
from imserver.store.sqlite.cards import ensure_notice_conv
from imserver.store.sqlite.jobs import SqliteJobs
from imserver.store.sqlite.outbox import insert_outbox

Job = Callable[[sqlite3.Connection], Any]


class SqliteDeadlinesMixin(SqliteJobs):
    """Card timers (reminders, overdue, escalation) and DING confirmations."""

    _insert: Callable[[sqlite3.Connection, NewMessage], Message]

    async def claim_timers(self, now: int, lease_ms: int, limit: int) -> list[Timer]:
        def job(conn: sqlite3.Connection) -> list[Timer]:
            rows = conn.execute(
                "SELECT id, card_id, kind, fire_at FROM timers WHERE done = 0 AND fire_at <= ?"
                " AND lease_until <= ? ORDER BY fire_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE timers SET lease_until = ? WHERE id = ?",
                [(now + lease_ms, r[0]) for r in rows],
            )
            return [Timer(*r) for r in rows]

        return await self._write(job)

    async def finish_timer(
        self, timer_id: int, events: Sequence[OutboxEntry] = (), now: int = 0
    ) -> None:
        """Mark the timer fired; the app events it caused join the outbox in the same commit."""
        rows = list(events)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE timers SET done = 1 WHERE id = ?", (timer_id,))
            insert_outbox(conn, rows, now)

        await self._write(job)

    async def next_timer_due(self) -> int | None:
        def job(conn: sqlite3.Connection) -> int | None:
            (at,) = conn.execute(
                "SELECT min(max(fire_at, lease_until)) FROM timers WHERE done = 0"
            ).fetchone()
            return None if at is None else int(at)

        return await self._read(job)

    async def add_card_holder(
        self, card_id: str, user: str, message: NewMessage, notice_conv: tuple[str, str, str]
    ) -> Message | None:
        def job(conn: sqlite3.Connection) -> Message | None:
            cur = conn.execute(
                "INSERT OR IGNORE INTO card_holders (user, card_id) VALUES (?, ?)", (user, card_id)
            )
            if cur.rowcount == 0:
                return None
            conv, who, name = notice_conv
            ensure_notice_conv(conn, conv, who, name, message.ts)
            return self._insert(conn, message)

        return await self._write(job)

    async def confirm_ding(self, conv: str, seq: int, user: str, now: int) -> str | None:
        def job(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "UPDATE dings SET confirmed_at = coalesce(confirmed_at, ?), next_at = NULL"
                " WHERE conv = ? AND seq = ? AND user = ? RETURNING sender",
                (now, conv, seq, user),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._write(job)

    async def ding_status(self, conv: str, seq: int) -> DingStatus | None:
        def job(conn: sqlite3.Connection) -> DingStatus | None:
            rows = conn.execute(
                "SELECT user, sender, confirmed_at FROM dings WHERE conv = ? AND seq = ?"
                " ORDER BY user",
                (conv, seq),
            ).fetchall()
            return ding_status_from_rows(rows)

        return await self._read(job)

    async def card_ding_status(
        self, card_id: str, sender: str | None = None
    ) -> tuple[list[str], list[str]]:
        def job(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            rows = conn.execute(
                "SELECT user, confirmed_at FROM dings WHERE card_id = ?"
                " AND (? IS NULL OR sender = ?) ORDER BY user",
                (card_id, sender, sender),
            ).fetchall()
            return confirmed_split(rows)

        return await self._read(job)

    async def due_dings(self, now: int, lease_ms: int, limit: int) -> list[DingDue]:
        """Only reads: one process reads and re-notifies, nothing else claims (no lease)."""
        del lease_ms

        def job(conn: sqlite3.Connection) -> list[DingDue]:
            rows = conn.execute(
                "SELECT conv, seq, user, notified FROM dings"
                " WHERE next_at IS NOT NULL AND next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            )
            return [DingDue(*r) for r in rows]

        return await self._read(job)

    async def next_ding_due(self) -> int | None:
        def job(conn: sqlite3.Connection) -> int | None:
            (at,) = conn.execute(
                "SELECT min(next_at) FROM dings WHERE next_at IS NOT NULL"
            ).fetchone()
            return None if at is None else int(at)

        return await self._read(job)

    async def ding_renotified(
        self, conv: str, seq: int, user: str, notified: int, next_at: int | None
    ) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE dings SET notified = ?, next_at = ? WHERE conv = ? AND seq = ? AND user = ?"
                " AND confirmed_at IS NULL",
                (notified, next_at, conv, seq, user),
            )

        await self._write(job)
