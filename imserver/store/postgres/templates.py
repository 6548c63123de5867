"""PostgreSQL side of card templates: numbered versions of each app's templates.

Several nodes may register the same template at once: the next version is
inserted with ``ON CONFLICT DO NOTHING`` and a lost race is run again
(``RetryJob``) once the other registration has committed, so versions stay
gapless and none is overwritten.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from imserver.store.postgres.jobs import PgConn, PgJobs, RetryJob
from imserver.store.rows import dump_json, load_json
from imserver.store.templates import TemplateRecord, TemplateSummary, check_template_room

_COLUMNS = "app_id, template_id, version, template, slots, created_at"


def _record(r: asyncpg.Record) -> TemplateRecord:
    return TemplateRecord(
        r["app_id"],
        r["template_id"],
        r["version"],
        load_json(r["template"]),
        tuple(load_json(r["slots"])),
        r["created_at"],
    )


async def _latest(conn: PgConn, app_id: str, template_id: str) -> TemplateRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM card_templates WHERE app_id = $1 AND template_id = $2"
        " ORDER BY version DESC LIMIT 1",
        app_id,
        template_id,
    )
    return None if row is None else _record(row)


class PgTemplatesMixin(PgJobs):
    async def put_template(
        self,
        app_id: str,
        template_id: str,
        template: dict[str, Any],
        slots: tuple[str, ...],
        now: int,
        limit: int = 1000,
    ) -> tuple[TemplateRecord, bool]:
        async def job(conn: PgConn) -> tuple[TemplateRecord, bool]:
            latest = await _latest(conn, app_id, template_id)
            if latest is not None and latest.template == template and latest.slots == slots:
                return latest, False
            if latest is None:
                # The app's row, locked: registrations of one app on several nodes
                # take turns here, so the count cannot be passed by a race.
                await conn.execute("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE", app_id)
                ids = await conn.fetchval(
                    "SELECT count(*) FROM card_templates WHERE app_id = $1 AND version = 1",
                    app_id,
                )
                check_template_room(app_id, template_id, ids, None, limit)
            else:
                check_template_room(app_id, template_id, 0, latest.version, limit)
            version = (latest.version if latest else 0) + 1
            inserted = await conn.fetchval(
                f"INSERT INTO card_templates ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT DO NOTHING RETURNING version",
                app_id,
                template_id,
                version,
                dump_json(template),
                dump_json(slots),
                now,
            )
            if inserted is None:
                raise RetryJob(f"template {app_id}/{template_id} v{version} stored meanwhile")
            return TemplateRecord(app_id, template_id, version, template, slots, now), True

        return await self._write(job)

    async def get_template(
        self, app_id: str, template_id: str, version: int | None = None
    ) -> TemplateRecord | None:
        async def job(conn: PgConn) -> TemplateRecord | None:
            if version is None:
                return await _latest(conn, app_id, template_id)
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM card_templates"
                " WHERE app_id = $1 AND template_id = $2 AND version = $3",
                app_id,
                template_id,
                version,
            )
            return None if row is None else _record(row)

        return await self._read(job)

    async def list_templates(self, app_id: str) -> list[TemplateSummary]:
        async def job(conn: PgConn) -> list[TemplateSummary]:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (t.template_id) t.template_id, t.version, t.slots,"
                " f.created_at AS first, t.created_at AS last"
                " FROM card_templates t"
                " JOIN card_templates f ON f.app_id = t.app_id"
                "  AND f.template_id = t.template_id AND f.version = 1"
                " WHERE t.app_id = $1 ORDER BY t.template_id, t.version DESC",
                app_id,
            )
            return [
                TemplateSummary(
                    r["template_id"],
                    r["version"],
                    tuple(load_json(r["slots"])),
                    r["first"],
                    r["last"],
                )
                for r in rows
            ]

        return await self._read(job)
