"""SQLite side of the dashboard's logged-out sessions (``imserver/dashboard/logouts.py``).

A row says "this session id was logged out"; it is needed only while a
cookie naming it could still be accepted, so each add purges the rows whose
session has expired (an index on ``expires_at`` keeps that a range delete).
"""

from __future__ import annotations

import sqlite3

from imserver.store.sqlite.jobs import SqliteJobs


class SqliteDashboardLogoutsMixin(SqliteJobs):
    async def add_dashboard_logout(self, sid: str, expires_at: int, now: int) -> None:
        """Record ``sid`` as logged out until ``expires_at`` (s); forget expired ones."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM dashboard_logouts WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO dashboard_logouts (sid, expires_at) VALUES (?, ?)"
                " ON CONFLICT (sid) DO NOTHING",
                (sid, expires_at),
            )

        await self._write(job)

    async def dashboard_logouts(self, now: int, limit: int) -> list[tuple[str, int]]:
        """``(sid, expires_at)`` of logged-out sessions not yet expired, latest expiry first."""

        def job(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(
                "SELECT sid, expires_at FROM dashboard_logouts WHERE expires_at > ?"
                " ORDER BY expires_at DESC LIMIT ?",
                (now, limit),
            ).fetchall()
            return [(str(sid), int(at)) for sid, at in rows]

        return await self._read(job)
