"""SQLite side of the operations dashboard: per-unit card counts, outbox and DING totals.

Every query is driven by an index: a subtree is a range of ``units_by_path``,
its people come from ``unit_members``' primary key, their cards from the
``(user, card_id)`` keys of ``card_holders`` and ``card_pending`` and, for cards
sent to many, from their broadcast memberships (``members_by_user``, then
``cards_by_audience``); outbox
counts read only the pending and failed part of ``outbox_due``. ``CROSS JOIN``
fixes the join order (SQLite's rule): from the subtree's people to their
cards, never a scan of every card holder probing the people. The service
caps how many units one call covers (``MAX_DASHBOARD_UNITS``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from functools import partial

from imserver.directory.model import Unit
from imserver.store.dashboard_records import (
    MAX_DASHBOARD_UNITS,
    AppOutbox,
    DingCounts,
    UnitCardCounts,
)
from imserver.store.directory_sync import PATH_END, UNIT_COLUMNS
from imserver.store.sqlite.jobs import SqliteJobs

_SUBTREE = """
WITH sub(user) AS (
    SELECT DISTINCT m.user FROM units d JOIN unit_members m ON m.unit = d.id
    WHERE d.path >= ?1 AND d.path < ?2
),
held AS (
    SELECT h.card_id FROM sub CROSS JOIN card_holders h ON h.user = sub.user
    UNION
    SELECT a.id FROM sub CROSS JOIN members m CROSS JOIN cards a
    ON m.user = sub.user AND m.conv >= 'b:' AND m.conv < 'b;' AND a.audience = m.conv
),
todo AS (SELECT p.card_id, p.due_at FROM sub CROSS JOIN card_pending p ON p.user = sub.user)
SELECT
    (SELECT count(*) FROM sub),
    (SELECT count(*) FROM held),
    (SELECT count(*) FROM held JOIN cards c ON c.id = held.card_id
      WHERE json_extract(CAST(c.approval AS TEXT), '$.state') != 'open'),
    (SELECT count(DISTINCT card_id) FROM todo),
    (SELECT count(*) FROM todo),
    (SELECT count(*) FROM todo WHERE due_at IS NOT NULL AND due_at < ?3)
"""

_OLDEST = """
WITH sub(user) AS (
    SELECT DISTINCT m.user FROM units d JOIN unit_members m ON m.unit = d.id
    WHERE d.path >= ?1 AND d.path < ?2
)
SELECT c.id, c.app_id, c.created_at
FROM sub CROSS JOIN card_pending p ON p.user = sub.user JOIN cards c ON c.id = p.card_id
ORDER BY c.created_at, c.id LIMIT 1
"""


def unit_counts(conn: sqlite3.Connection, unit: Unit, now: int) -> UnitCardCounts:
    """The counts of one unit's subtree, on ``conn`` (one snapshot with the caller's reads)."""
    bounds = (unit.path, unit.path + PATH_END)
    people, pushed, decided, pending, todo, overdue = conn.execute(
        _SUBTREE, (*bounds, now)
    ).fetchone()
    oldest = conn.execute(_OLDEST, bounds).fetchone()
    card, app, at = oldest if oldest is not None else (None, None, None)
    return UnitCardCounts(unit, people, pushed, decided, pending, todo, overdue, card, app, at)


class SqliteDashboardMixin(SqliteJobs):
    async def dashboard_children(self, parent: str | None) -> list[Unit]:
        """The units directly under ``parent`` (``None``: the top units), in sort order."""

        def job(conn: sqlite3.Connection) -> list[Unit]:
            where = "parent IS NULL" if parent is None else "parent = ?"
            rows = conn.execute(
                f"SELECT {UNIT_COLUMNS} FROM units WHERE {where} ORDER BY sort, path LIMIT ?",
                (MAX_DASHBOARD_UNITS,) if parent is None else (parent, MAX_DASHBOARD_UNITS),
            )
            return [Unit(*r) for r in rows]

        return await self._read(job)

    async def unit_card_counts(self, units: Iterable[Unit], now: int) -> list[UnitCardCounts]:
        """Card counts per unit subtree, in the order given (at most ``MAX_DASHBOARD_UNITS``).

        One read job per unit, so the requests of people (sync, history) queue
        between them rather than behind the whole table: a province of 100k
        people is about a second of reading.
        """
        out = []
        for u in list(units)[:MAX_DASHBOARD_UNITS]:
            out.append(await self._read(partial(unit_counts, unit=u, now=now)))
        return out

    async def outbox_by_app(self) -> list[AppOutbox]:
        """Pending and failed callbacks per app (delivered ones are history, not load)."""

        def job(conn: sqlite3.Connection) -> list[AppOutbox]:
            rows = conn.execute(
                "SELECT app_id, sum(state = 'pending'), sum(state = 'failed'),"
                " min(CASE WHEN state = 'pending' THEN created_at END)"
                " FROM outbox WHERE state IN ('pending', 'failed') GROUP BY app_id ORDER BY app_id"
            )
            return [AppOutbox(a, int(p), int(f), at) for a, p, f, at in rows]

        return await self._read(job)

    async def ding_counts(self) -> DingCounts:
        """Every DING recipient row: how many confirmed, how many still being re-notified."""

        def job(conn: sqlite3.Connection) -> DingCounts:
            total, confirmed = conn.execute(
                "SELECT count(*), count(confirmed_at) FROM dings"
            ).fetchone()
            (awaiting,) = conn.execute(
                "SELECT count(*) FROM dings WHERE next_at IS NOT NULL"
            ).fetchone()
            return DingCounts(total, confirmed, awaiting)

        return await self._read(job)
