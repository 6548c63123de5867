"""SQLite side of apps: registrations, secrets and their rotation, deletion.

A mixin of the store: a registration commits with its audit entry, in one
transaction (or neither does).
"""

from __future__ import annotations

import sqlite3

import orjson

from imserver.store.records import AppRecord, AuditEntry, StoredApp
from imserver.store.rows import APP_COLUMNS, STORED_APP_COLUMNS, app_from_row, stored_app_from_row
from imserver.store.sqlite.audit import SqliteAuditLog
from imserver.store.sqlite.jobs import SqliteJobs


class SqliteAppsMixin(SqliteJobs):
    """App storage; needs ``_write``/``_read`` and ``audit`` from the store."""

    audit: SqliteAuditLog

    async def upsert_app(self, app: AppRecord, now: int, audit: AuditEntry | None = None) -> None:
        """Register or replace ``app``; ``audit``, if given, commits with it (or neither does).

        The whole registration is replaced, rotation overlap included;
        ``created_at`` is kept from the first registration.
        """

        def job(conn: sqlite3.Connection) -> None:
            if audit is not None:
                a = audit
                self.audit.append_in(conn, now, a.actor, a.action, a.target, a.details)
            conn.execute(
                f"INSERT INTO apps ({STORED_APP_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
                " secret = excluded.secret, callback_url = excluded.callback_url,"
                " scope = excluded.scope, permissions = excluded.permissions,"
                " previous_secret = excluded.previous_secret,"
                " previous_secret_until = excluded.previous_secret_until,"
                " events = excluded.events, updated_at = excluded.updated_at",
                (
                    app.app_id,
                    app.name,
                    app.secret,
                    app.callback_url,
                    orjson.dumps(list(app.scope)),
                    orjson.dumps(list(app.permissions)),
                    app.previous_secret,
                    app.previous_secret_until,
                    orjson.dumps(list(app.events)),
                    now,
                    now,
                ),
            )

        await self._write(job)

    async def get_app(self, app_id: str) -> AppRecord | None:
        def job(conn: sqlite3.Connection) -> AppRecord | None:
            row = conn.execute(f"SELECT {APP_COLUMNS} FROM apps WHERE id = ?", (app_id,)).fetchone()
            return None if row is None else app_from_row(row)

        return await self._read(job)

    async def list_apps(self) -> list[StoredApp]:
        """Every registered app with its times, by id."""

        def job(conn: sqlite3.Connection) -> list[StoredApp]:
            rows = conn.execute(f"SELECT {STORED_APP_COLUMNS} FROM apps ORDER BY id").fetchall()
            return [stored_app_from_row(r) for r in rows]

        return await self._read(job)

    async def delete_app(self, app_id: str, now: int, audit: AuditEntry) -> bool:
        """Remove the app (its cards and outbox stay); False if there was none (nothing audited)."""

        def job(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM apps WHERE id = ?", (app_id,)).rowcount == 0:
                return False
            a = audit
            self.audit.append_in(conn, now, a.actor, a.action, a.target, a.details)
            return True

        return await self._write(job)

    async def rotate_app_secret(
        self, app_id: str, secret: str, previous_until: int, now: int, audit: AuditEntry
    ) -> bool:
        """Make ``secret`` current and keep the old one valid until ``previous_until`` (ms).

        One statement, so two rotations racing cannot lose the secret between
        them; an older overlap still running ends here. False if no such app.
        """

        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE apps SET previous_secret = secret, previous_secret_until = ?,"
                " secret = ?, updated_at = ? WHERE id = ?",
                (previous_until, secret, now, app_id),
            )
            if cur.rowcount == 0:
                return False
            a = audit
            self.audit.append_in(conn, now, a.actor, a.action, a.target, a.details)
            return True

        return await self._write(job)
