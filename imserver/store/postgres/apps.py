"""PostgreSQL side of apps: registrations, secrets and their rotation, deletion.

A mixin of the store: a registration commits with its audit entry, in one
transaction (or neither does).
"""

from __future__ import annotations

from imserver.store.postgres.audit import PostgresAuditLog
from imserver.store.postgres.jobs import PgConn, PgJobs
from imserver.store.records import AppRecord, AuditEntry, StoredApp
from imserver.store.rows import (
    APP_COLUMNS,
    STORED_APP_COLUMNS,
    app_from_row,
    dump_json,
    stored_app_from_row,
)


class PgAppsMixin(PgJobs):
    """App storage; needs ``_write``/``_read`` and ``audit`` from the store."""

    audit: PostgresAuditLog

    async def upsert_app(self, app: AppRecord, now: int, audit: AuditEntry | None = None) -> None:
        """Register or replace ``app``; ``audit``, if given, commits with it (or neither does).

        The whole registration is replaced, rotation overlap included;
        ``created_at`` is kept from the first registration.
        """

        async def job(conn: PgConn) -> None:
            if audit is not None:
                a = audit
                await self.audit.append_in(conn, now, a.actor, a.action, a.target, a.details)
            await conn.execute(
                f"INSERT INTO apps ({STORED_APP_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                " ON CONFLICT (id) DO UPDATE SET"
                " name = excluded.name, secret = excluded.secret,"
                " callback_url = excluded.callback_url, scope = excluded.scope,"
                " permissions = excluded.permissions,"
                " previous_secret = excluded.previous_secret,"
                " previous_secret_until = excluded.previous_secret_until,"
                " events = excluded.events, updated_at = excluded.updated_at",
                app.app_id,
                app.name,
                app.secret,
                app.callback_url,
                dump_json(list(app.scope)),
                dump_json(list(app.permissions)),
                app.previous_secret,
                app.previous_secret_until,
                dump_json(list(app.events)),
                now,
                now,
            )

        await self._write(job)

    async def get_app(self, app_id: str) -> AppRecord | None:
        async def job(conn: PgConn) -> AppRecord | None:
            row = await conn.fetchrow(f"SELECT {APP_COLUMNS} FROM apps WHERE id = $1", app_id)
            return None if row is None else app_from_row(row)

        return await self._read(job)

    async def list_apps(self) -> list[StoredApp]:
        """Every registered app with its times, by id."""

        async def job(conn: PgConn) -> list[StoredApp]:
            rows = await conn.fetch(f"SELECT {STORED_APP_COLUMNS} FROM apps ORDER BY id")
            return [stored_app_from_row(r) for r in rows]

        return await self._read(job)

    async def delete_app(self, app_id: str, now: int, audit: AuditEntry) -> bool:
        """Remove the app (its cards and outbox stay); False if there was none (nothing audited)."""

        async def job(conn: PgConn) -> bool:
            gone = await conn.fetchval("DELETE FROM apps WHERE id = $1 RETURNING id", app_id)
            if gone is None:
                return False
            a = audit
            await self.audit.append_in(conn, now, a.actor, a.action, a.target, a.details)
            return True

        return await self._write(job)

    async def rotate_app_secret(
        self, app_id: str, secret: str, previous_until: int, now: int, audit: AuditEntry
    ) -> bool:
        """Make ``secret`` current and keep the old one valid until ``previous_until`` (ms).

        One statement, so two rotations racing cannot lose the secret between
        them; an older overlap still running ends here. False if no such app.
        """

        async def job(conn: PgConn) -> bool:
            done = await conn.fetchval(
                "UPDATE apps SET previous_secret = secret, previous_secret_until = $1,"
                " secret = $2, updated_at = $3 WHERE id = $4 RETURNING id",
                previous_until,
                secret,
                now,
                app_id,
            )
            if done is None:
                return False
            a = audit
            await self.audit.append_in(conn, now, a.actor, a.action, a.target, a.details)
            return True

        return await self._write(job)
