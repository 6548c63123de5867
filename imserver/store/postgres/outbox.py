"""PostgreSQL side of the callback outbox: claims with a lease, outcomes, retries, app events.

Entries are written by the card store in the transaction of the version
that caused them (``insert_outbox``); this is the dispatchers' side, on every
node at once (claims skip rows another node holds: ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

from collections.abc import Sequence

from imserver.store.postgres.jobs import PgConn, PgJobs
from imserver.store.records import OutboxEntry, OutboxItem
from imserver.store.rows import OUTBOX_COLUMNS, dump_json, outbox_from_row


async def insert_outbox(conn: PgConn, entries: Sequence[OutboxEntry], now: int) -> int:
    """Outbox rows due now, in one statement; a repeat of (card, action/event id) is ignored.

    Returns how many were new.
    """
    if not entries:
        return 0
    rows = await conn.fetch(
        "INSERT INTO outbox (app_id, card_id, action_id, payload, state, attempts, next_at,"
        " created_at, kind) SELECT a, c, i, p, 'pending', 0, $6, $6, k"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])"
        " AS t(a, c, i, p, k) ON CONFLICT DO NOTHING RETURNING id",
        [o.app_id for o in entries],
        [o.card_id for o in entries],
        [o.action_id for o in entries],
        [dump_json(o.payload) for o in entries],
        [o.kind for o in entries],
        now,
    )
    return len(rows)


class PgOutboxMixin(PgJobs):
    """The callback dispatcher's queries; needs ``_write``/``_read`` from the store."""

    async def claim_callbacks(self, now: int, lease_ms: int, limit: int) -> list[OutboxItem]:
        """Due pending callbacks, leased so no other worker or node sends them meanwhile."""

        async def job(conn: PgConn) -> list[OutboxItem]:
            rows = await conn.fetch(
                f"UPDATE outbox SET lease_until = $2 WHERE id IN ("
                " SELECT id FROM outbox WHERE state = 'pending' AND next_at <= $1"
                " AND lease_until <= $1 ORDER BY next_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {OUTBOX_COLUMNS}",
                now,
                now + lease_ms,
                limit,
            )
            items = [outbox_from_row(r) for r in rows]
            return sorted(items, key=lambda item: (item.next_at, item.id))

        return await self._write(job)

    async def next_callback_due(self) -> int | None:
        async def job(conn: PgConn) -> int | None:
            at = await conn.fetchval(
                "SELECT min(greatest(next_at, lease_until)) FROM outbox WHERE state = 'pending'"
            )
            return None if at is None else int(at)

        return await self._read(job)

    async def work_backlog(self) -> tuple[int, int, int]:
        """(outbox pending, outbox failed, timers not yet fired): the metrics' gauges."""

        async def job(conn: PgConn) -> tuple[int, int, int]:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending'),"
                " (SELECT count(*) FROM outbox WHERE state = 'failed'),"
                " (SELECT count(*) FROM timers WHERE NOT done)"
            )
            assert row is not None
            return int(row[0]), int(row[1]), int(row[2])

        return await self._read(job)

    async def finish_callback(
        self, item_id: int, *, state: str, attempts: int, next_at: int, error: str
    ) -> None:
        async def job(conn: PgConn) -> None:
            await conn.execute(
                "UPDATE outbox SET state = $1, attempts = $2, next_at = $3, lease_until = 0,"
                " last_error = $4 WHERE id = $5",
                state,
                attempts,
                next_at,
                error[:500],
                item_id,
            )

        await self._write(job)

    async def get_callback(self, card_id: str, action_id: str) -> OutboxItem | None:
        async def job(conn: PgConn) -> OutboxItem | None:
            row = await conn.fetchrow(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE card_id = $1 AND action_id = $2",
                card_id,
                action_id,
            )
            return None if row is None else outbox_from_row(row)

        return await self._read(job)

    async def list_callbacks(self, state: str, limit: int) -> list[OutboxItem]:
        async def job(conn: PgConn) -> list[OutboxItem]:
            rows = await conn.fetch(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = $1 ORDER BY id LIMIT $2",
                state,
                limit,
            )
            return [outbox_from_row(r) for r in rows]

        return await self._read(job)

    async def pending_callbacks(self, card_id: str) -> int:
        """Pending action callbacks of the card (app events never count: docs/cards.md)."""

        async def job(conn: PgConn) -> int:
            n = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE card_id = $1 AND state = 'pending'"
                " AND kind = 'action'",
                card_id,
            )
            return int(n)

        return await self._read(job)

    async def enqueue_events(self, entries: Sequence[OutboxEntry], now: int) -> int:
        """Add app events to the outbox; one already there (same card, ``event_id``) is kept."""
        rows = list(entries)

        async def job(conn: PgConn) -> int:
            return await insert_outbox(conn, rows, now)

        return await self._write(job) if rows else 0

    async def retry_callback(self, item_id: int, now: int) -> None:
        async def job(conn: PgConn) -> None:
            await conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_at = $1, lease_until = 0"
                " WHERE id = $2",
                now,
                item_id,
            )

        await self._write(job)
