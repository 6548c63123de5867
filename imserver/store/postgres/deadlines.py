"""PostgreSQL side of ``DeadlineStore``: card timers and DING confirmations.

Timers are claimed like callbacks: ``FOR UPDATE SKIP LOCKED`` plus a lease,
so a reminder fires on one node only and a dead node's claimed timers fire
elsewhere once its lease runs out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from imserver.store.postgres.cards import ensure_notice_conv
from imserver.store.postgres.jobs import PgConn, PgJobs
from imserver.store.postgres.outbox import insert_outbox
from imserver.store.records import DingDue, DingStatus, Message, NewMessage, OutboxEntry, Timer
from imserver.store.rows import confirmed_split, ding_status_from_rows


class PgDeadlinesMixin(PgJobs):
    """Card timers (reminders, overdue, escalation) and DING confirmations."""

    _insert: Callable[[PgConn, NewMessage], Awaitable[Message]]

    async def claim_timers(self, now: int, lease_ms: int, limit: int) -> list[Timer]:
        async def job(conn: PgConn) -> list[Timer]:
            rows = await conn.fetch(
                "UPDATE timers SET lease_until = $2 WHERE id IN ("
                " SELECT id FROM timers WHERE NOT done AND fire_at <= $1 AND lease_until <= $1"
                " ORDER BY fire_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, card_id, kind, fire_at",
                now,
                now + lease_ms,
                limit,
            )
            return sorted((Timer(*r) for r in rows), key=lambda t: (t.fire_at, t.id))

        return await self._write(job)

    async def finish_timer(
        self, timer_id: int, events: Sequence[OutboxEntry] = (), now: int = 0
    ) -> None:
        """Mark the timer fired; the app events it caused join the outbox in the same commit."""
        rows = list(events)

        async def job(conn: PgConn) -> None:
            await conn.execute("UPDATE timers SET done = TRUE WHERE id = $1", timer_id)
            await insert_outbox(conn, rows, now)

        await self._write(job)

    async def next_timer_due(self) -> int | None:
        async def job(conn: PgConn) -> int | None:
            at = await conn.fetchval(
                "SELECT min(greatest(fire_at, lease_until)) FROM timers WHERE NOT done"
            )
            return None if at is None else int(at)

        return await self._read(job)

    async def add_card_holder(
        self, card_id: str, user: str, message: NewMessage, notice_conv: tuple[str, str, str]
    ) -> Message | None:
        async def job(conn: PgConn) -> Message | None:
            status = await conn.execute(
                'INSERT INTO card_holders ("user", card_id) VALUES ($1, $2) ON CONFLICT DO NOTHING',
                user,
                card_id,
            )
            if status == "INSERT 0 0":
                return None
            conv, who, name = notice_conv
            await ensure_notice_conv(conn, conv, who, name, message.ts)
            return await self._insert(conn, message)

        return await self._write(job)

    async def confirm_ding(self, conv: str, seq: int, user: str, now: int) -> str | None:
        async def job(conn: PgConn) -> str | None:
            sender = await conn.fetchval(
                "UPDATE dings SET confirmed_at = coalesce(confirmed_at, $1), next_at = NULL"
                ' WHERE conv = $2 AND seq = $3 AND "user" = $4 RETURNING sender',
                now,
                conv,
                seq,
                user,
            )
            return None if sender is None else str(sender)

        return await self._write(job)

    async def ding_status(self, conv: str, seq: int) -> DingStatus | None:
        async def job(conn: PgConn) -> DingStatus | None:
            rows = await conn.fetch(
                'SELECT "user", sender, confirmed_at FROM dings WHERE conv = $1 AND seq = $2'
                ' ORDER BY "user"',
                conv,
                seq,
            )
            return ding_status_from_rows(rows)

        return await self._read(job)

    async def card_ding_status(
        self, card_id: str, sender: str | None = None
    ) -> tuple[list[str], list[str]]:
        async def job(conn: PgConn) -> tuple[list[str], list[str]]:
            rows = await conn.fetch(
                'SELECT "user", confirmed_at FROM dings WHERE card_id = $1'
                ' AND ($2::text IS NULL OR sender = $2) ORDER BY "user"',
                card_id,
                sender,
            )
            return confirmed_split(rows)

        return await self._read(job)

    async def due_dings(self, now: int, lease_ms: int, limit: int) -> list[DingDue]:
        """Unconfirmed DINGs due for re-notification, leased so one node sends each.

        The SQLite store only reads here (one process); with several nodes the
        rows are taken ``FOR UPDATE SKIP LOCKED`` and their ``next_at`` pushed
        out by ``lease_ms`` (``chat.ding_lease_s``), which ``ding_renotified``
        then overwrites.
        """

        async def job(conn: PgConn) -> list[DingDue]:
            rows = await conn.fetch(
                "UPDATE dings d SET next_at = $3 FROM ("
                ' SELECT conv, seq, "user" FROM dings WHERE next_at IS NOT NULL AND next_at <= $1'
                " ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED) due"
                ' WHERE d.conv = due.conv AND d.seq = due.seq AND d."user" = due."user"'
                ' RETURNING d.conv, d.seq, d."user", d.notified',
                now,
                limit,
                now + lease_ms,
            )
            return sorted((DingDue(*r) for r in rows), key=lambda d: (d.conv, d.seq, d.user))

        return await self._write(job)

    async def next_ding_due(self) -> int | None:
        async def job(conn: PgConn) -> int | None:
            at = await conn.fetchval("SELECT min(next_at) FROM dings WHERE next_at IS NOT NULL")
            return None if at is None else int(at)

        return await self._read(job)

    async def ding_renotified(
        self, conv: str, seq: int, user: str, notified: int, next_at: int | None
    ) -> None:
        async def job(conn: PgConn) -> None:
            await conn.execute(
                "UPDATE dings SET notified = $1, next_at = $2"
                ' WHERE conv = $3 AND seq = $4 AND "user" = $5 AND confirmed_at IS NULL',
                notified,
                next_at,
                conv,
                seq,
                user,
            )

        await self._write(job)
