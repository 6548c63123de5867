"""SQLite side of card templates: numbered versions of each app's templates.

The writer thread runs one job at a time, so reading the latest version and
inserting the next one in the same job cannot race another registration.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from imserver.store.rows import dump_json, load_json
from imserver.store.sqlite.jobs import SqliteJobs
from imserver.store.templates import TemplateRecord, TemplateSummary, check_template_room

_COLUMNS = "app_id, template_id, version, template, slots, created_at"


def _record(row: tuple[Any, ...]) -> TemplateRecord:
    app_id, template_id, version, template, slots, created_at = row
    return TemplateRecord(
        app_id, template_id, version, load_json(template), tuple(load_json(slots)), created_at
    )


def _latest(conn: sqlite3.Connection, app_id: str, template_id: str) -> TemplateRecord | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM card_templates WHERE app_id = ? AND template_id = ?"
        " ORDER BY version DESC LIMIT 1",
        (app_id, template_id),
    ).fetchone()
    return None if row is None else _record(row)


class SqliteTemplatesMixin(SqliteJobs):
    async def put_template(
        self,
        app_id: str,
        template_id: str,
        template: dict[str, Any],
        slots: tuple[str, ...],
        now: int,
        limit: int = 1000,
    ) -> tuple[TemplateRecord, bool]:
        def job(conn: sqlite3.Connection) -> tuple[TemplateRecord, bool]:
            latest = _latest(conn, app_id, template_id)
            if latest is not None and latest.template == template and latest.slots == slots:
                return latest, False
            if latest is None:
                (ids,) = conn.execute(
                    "SELECT count(*) FROM card_templates WHERE app_id = ? AND version = 1",
                    (app_id,),
                ).fetchone()
                check_template_room(app_id, template_id, ids, None, limit)
            else:
                check_template_room(app_id, template_id, 0, latest.version, limit)
            record = TemplateRecord(
                app_id, template_id, (latest.version if latest else 0) + 1, template, slots, now
            )
            conn.execute(
                f"INSERT INTO card_templates ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (app_id, template_id, record.version, dump_json(template), dump_json(slots), now),
            )
            return record, True

        return await self._write(job)

    async def get_template(
        self, app_id: str, template_id: str, version: int | None = None
    ) -> TemplateRecord | None:
        def job(conn: sqlite3.Connection) -> TemplateRecord | None:
            if version is None:
                return _latest(conn, app_id, template_id)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM card_templates"
                " WHERE app_id = ? AND template_id = ? AND version = ?",
                (app_id, template_id, version),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._read(job)

    async def list_templates(self, app_id: str) -> list[TemplateSummary]:
        def job(conn: sqlite3.Connection) -> list[TemplateSummary]:
            rows = conn.execute(
                "SELECT t.template_id, t.version, t.slots, f.created_at, t.created_at"
                " FROM card_templates t"
                " JOIN card_templates f ON f.app_id = t.app_id"
                "  AND f.template_id = t.template_id AND f.version = 1"
                " WHERE t.app_id = ? AND t.version = (SELECT max(version) FROM card_templates m"
                "  WHERE m.app_id = t.app_id AND m.template_id = t.template_id)"
                " ORDER BY t.template_id",
                (app_id,),
            ).fetchall()
            return [
                TemplateSummary(tid, version, tuple(load_json(slots)), first, last)
                for tid, version, slots, first, last in rows
            ]

        return await self._read(job)
