"""PostgreSQL side of the dashboard's logged-out sessions (``imserver/dashboard/logouts.py``).

Every node of a cluster reads this table, so a node that missed the bus
event (down, or cut from Redis, during the logout) still refuses the
session. Rows are kept until the session expires; each add purges the
expired ones.
"""

from __future__ import annotations

from imserver.store.postgres.jobs import PgConn, PgJobs


class PgDashboardLogoutsMixin(PgJobs):
    async def add_dashboard_logout(self, sid: str, expires_at: int, now: int) -> None:
        """Record ``sid`` as logged out until ``expires_at`` (s); forget expired ones."""

        async def job(conn: PgConn) -> None:
            await conn.execute("DELETE FROM dashboard_logouts WHERE expires_at <= $1", now)
            await conn.execute(
                "INSERT INTO dashboard_logouts (sid, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (sid) DO NOTHING",
                sid,
                expires_at,
            )

        await self._write(job)

    async def dashboard_logouts(self, now: int, limit: int) -> list[tuple[str, int]]:
        """``(sid, expires_at)`` of logged-out sessions not yet expired, latest expiry first."""

        async def job(conn: PgConn) -> list[tuple[str, int]]:
            rows = await conn.fetch(
                "SELECT sid, expires_at FROM dashboard_logouts WHERE expires_at > $1"
                " ORDER BY expires_at DESC LIMIT $2",
                now,
                limit,
            )
            return [(str(r["sid"]), int(r["expires_at"])) for r in rows]

        return await self._read(job)
