"""PostgreSQL side of the operations dashboard: per-unit card counts, outbox and DING totals.

The same questions as ``store/sqlite/dashboard.py``, each one statement (a
round trip costs across a network); the same indexes carry them: a subtree
is a range of ``units_by_path``, people and cards come by primary key, the
outbox by the pending and failed part of ``outbox_due``.
"""

from __future__ import annotations

from collections.abc import Iterable

from imserver.directory.model import Unit
from imserver.store.dashboard_records import (
    MAX_DASHBOARD_UNITS,
    AppOutbox,
    DingCounts,
    UnitCardCounts,
)
from imserver.store.directory_sync import PATH_END, UNIT_COLUMNS
from imserver.store.postgres.jobs import PgConn, PgJobs

_SUBTREE = """
WITH sub AS (
    SELECT DISTINCT m."user" FROM units d JOIN unit_members m ON m.unit = d.id
    WHERE d.path >= $1 AND d.path < $2
),
held AS (
    SELECT h.card_id FROM sub JOIN card_holders h ON h."user" = sub."user"
    UNION
    SELECT a.id FROM sub JOIN members m ON m."user" = sub."user"
    JOIN cards a ON a.audience = m.conv
    WHERE m.conv >= 'b:' AND m.conv < 'b;' AND a.audience IS NOT NULL
),
todo AS (SELECT p.card_id, p.due_at FROM sub JOIN card_pending p ON p."user" = sub."user"),
oldest AS (
    SELECT c.id, c.app_id, c.created_at FROM todo JOIN cards c ON c.id = todo.card_id
    ORDER BY c.created_at, c.id LIMIT 1
)
SELECT
    (SELECT count(*) FROM sub) AS people,
    (SELECT count(*) FROM held) AS pushed,
    (SELECT count(*) FROM held JOIN cards c ON c.id = held.card_id
      WHERE c.approval::jsonb ->> 'state' <> 'open') AS decided,
    (SELECT count(DISTINCT card_id) FROM todo) AS pending,
    (SELECT count(*) FROM todo) AS todo,
    (SELECT count(*) FROM todo WHERE due_at IS NOT NULL AND due_at < $3) AS overdue,
    (SELECT id FROM oldest) AS oldest_card,
    (SELECT app_id FROM oldest) AS oldest_app,
    (SELECT created_at FROM oldest) AS oldest_at
"""


class PgDashboardMixin(PgJobs):
    async def dashboard_children(self, parent: str | None) -> list[Unit]:
        """The units directly under ``parent`` (``None``: the top units), in sort order."""

        async def job(conn: PgConn) -> list[Unit]:
            if parent is None:
                rows = await conn.fetch(
                    f"SELECT {UNIT_COLUMNS} FROM units WHERE parent IS NULL"
                    " ORDER BY sort, path LIMIT $1",
                    MAX_DASHBOARD_UNITS,
                )
            else:
                rows = await conn.fetch(
                    f"SELECT {UNIT_COLUMNS} FROM units WHERE parent = $1"
                    " ORDER BY sort, path LIMIT $2",
                    parent,
                    MAX_DASHBOARD_UNITS,
                )
            return [Unit(*r) for r in rows]

        return await self._read(job)

    async def unit_card_counts(self, units: Iterable[Unit], now: int) -> list[UnitCardCounts]:
        """Card counts per unit subtree, in the order given (at most ``MAX_DASHBOARD_UNITS``)."""
        wanted = list(units)[:MAX_DASHBOARD_UNITS]

        async def job(conn: PgConn) -> list[UnitCardCounts]:
            out = []
            for u in wanted:
                r = await conn.fetchrow(_SUBTREE, u.path, u.path + PATH_END, now)
                assert r is not None  # an aggregate row always comes back
                out.append(
                    UnitCardCounts(
                        u,
                        r["people"],
                        r["pushed"],
                        r["decided"],
                        r["pending"],
                        r["todo"],
                        r["overdue"],
                        r["oldest_card"],
                        r["oldest_app"],
                        r["oldest_at"],
                    )
                )
            return out

        return await self._read(job)

    async def outbox_by_app(self) -> list[AppOutbox]:
        """Pending and failed callbacks per app (delivered ones are history, not load)."""

        async def job(conn: PgConn) -> list[AppOutbox]:
            rows = await conn.fetch(
                "SELECT app_id, count(*) FILTER (WHERE state = 'pending') AS pending,"
                " count(*) FILTER (WHERE state = 'failed') AS failed,"
                " min(created_at) FILTER (WHERE state = 'pending') AS oldest"
                " FROM outbox WHERE state IN ('pending', 'failed') GROUP BY app_id ORDER BY app_id"
            )
            return [AppOutbox(r["app_id"], r["pending"], r["failed"], r["oldest"]) for r in rows]

        return await self._read(job)

    async def ding_counts(self) -> DingCounts:
        """Every DING recipient row: how many confirmed, how many still being re-notified."""

        async def job(conn: PgConn) -> DingCounts:
            r = await conn.fetchrow(
                "SELECT count(*) AS total, count(confirmed_at) AS confirmed,"
                " count(*) FILTER (WHERE next_at IS NOT NULL) AS awaiting FROM dings"
            )
            assert r is not None
            return DingCounts(r["total"], r["confirmed"], r["awaiting"])

        return await self._read(job)
