"""What ``store check``, ``audit verify`` and ``audit head`` check on PostgreSQL: they only read.

:func:`check_schema`: the database holds imserver's schema at a version this
release knows, with every table, index and audit trigger its migrations
create. :func:`check_database`: that, plus the invariants the server relies
on (``INVARIANTS``), each a query that must return no row.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Final

from imserver.errors import NoDatabaseYet, StoreDamaged, StoreForeign
from imserver.store.migrations import SCHEMA_VERSION, refuse_newer
from imserver.store.postgres.audit import missing_audit_triggers
from imserver.store.postgres.jobs import PgConn
from imserver.store.postgres.schema import MIGRATIONS, applied_versions

log = logging.getLogger(__name__)


_FIX_DSN: Final = "check [store] dsn / IMSERVER_STORE_DSN (database and search_path)"
_FIX_RESTORE: Final = (
    "stop the nodes and restore the last good backup (pg_restore or point-in-time recovery,"
    " docs/cluster.md), or repair the rows named before serving again"
)
_CREATES: Final = re.compile(r"CREATE (?:UNIQUE )?(?:TABLE|INDEX|FUNCTION) (\w+)")


def expected_objects(applied: list[int]) -> frozenset[str]:
    """Tables, indexes and functions the migrations ``applied`` create, read from their SQL."""
    names = {"schema_migrations", "audit_log"}
    for version, _, sql in MIGRATIONS:
        if version in applied:
            names.update(_CREATES.findall(sql))
    return frozenset(names)


async def check_schema(conn: PgConn, describe: str) -> int:
    """The applied schema version, if this release can use the schema; reads only.

    The PostgreSQL twin of the SQLite file check: raises :class:`NoDatabaseYet`
    for an empty schema, :class:`StoreForeign` for tables without imserver's
    ``schema_migrations``, :class:`StoreTooNew` for a newer release's schema
    and :class:`StoreDamaged` when versions, tables, indexes, functions or the
    audit log's append-only triggers are missing.
    """
    present = {
        row[0]
        for row in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(current_schema())"
            " AND relkind IN ('r', 'p', 'i') UNION ALL SELECT proname FROM pg_proc"
            " WHERE pronamespace = to_regnamespace(current_schema())"
        )
    }
    applied = await applied_versions(conn) if "schema_migrations" in present else []
    if not applied:
        if present <= {"schema_migrations", "schema_migrations_pkey"}:
            raise NoDatabaseYet(describe)
        raise StoreForeign(
            describe,
            "no imserver schema version recorded, yet it has tables"
            f" {', '.join(sorted(present)[:8])}",
            _FIX_DSN,
        )
    refuse_newer(describe, applied)
    if applied != list(range(1, len(applied) + 1)):
        raise StoreDamaged(describe, f"schema versions {applied} are not 1..n", _FIX_RESTORE)
    missing = sorted(expected_objects(applied) - present)
    missing += [f"trigger {name}" for name in await missing_audit_triggers(conn)]
    if missing:
        raise StoreDamaged(
            describe,
            f"schema version {applied[-1]} but {', '.join(missing[:8])} missing",
            _FIX_RESTORE,
        )
    return applied[-1]


@dataclass(frozen=True, slots=True)
class Invariant:
    """Something the server relies on that no constraint enforces, as the rows that break it.

    ``broken`` names those rows; ``sql`` returns up to three of them as
    ``(offender described, how many offenders in all)``.
    """

    broken: str
    sql: str


INVARIANTS: Final = (
    Invariant(
        "conversations whose last_seq is not the seq of their newest message",
        "SELECT format('%s (last_seq %s, newest message %s)', c.id, c.last_seq,"
        " coalesce(m.top, 0)), count(*) OVER () FROM conversations c LEFT JOIN"
        " (SELECT conv, max(seq) AS top FROM messages GROUP BY conv) m ON m.conv = c.id"
        " WHERE c.last_seq <> coalesce(m.top, 0) ORDER BY c.id LIMIT 3",
    ),
    Invariant(
        "conversations whose messages do not have seq 1, 2, 3, ... without gaps",
        "SELECT format('%s (%s messages, seq %s to %s)', conv, count(*), min(seq), max(seq)),"
        " count(*) OVER () FROM messages GROUP BY conv"
        " HAVING min(seq) <> 1 OR count(*) <> max(seq) ORDER BY conv LIMIT 3",
    ),
    Invariant(
        "messages of no stored conversation",
        "SELECT format('%s (%s messages)', m.conv, count(*)), count(*) OVER () FROM messages m"
        " WHERE NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = m.conv)"
        " GROUP BY m.conv ORDER BY m.conv LIMIT 3",
    ),
    Invariant(
        "read cursors past their conversation's last_seq",
        """SELECT format('%s in %s (read_seq %s, last_seq %s)', m."user", m.conv, m.read_seq,"""
        " c.last_seq), count(*) OVER () FROM members m JOIN conversations c ON c.id = m.conv"
        """ WHERE m.read_seq > c.last_seq ORDER BY m.conv, m."user" LIMIT 3""",
    ),
    Invariant(
        "DINGs of no stored message",
        """SELECT format('%s seq %s to %s', d.conv, d.seq, d."user"), count(*) OVER ()"""
        " FROM dings d WHERE NOT EXISTS"
        " (SELECT 1 FROM messages m WHERE m.conv = d.conv AND m.seq = d.seq) ORDER BY 1 LIMIT 3",
    ),
    Invariant(
        "outbox callbacks of no stored card, or in a state other than pending, delivered, failed",
        "SELECT format('%s (card %s, state %s)', o.id, o.card_id, o.state), count(*) OVER ()"
        " FROM outbox o WHERE o.state NOT IN ('pending', 'delivered', 'failed')"
        " OR (o.kind = 'action' AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.id = o.card_id))"
        " ORDER BY o.id LIMIT 3",
    ),
    Invariant(
        "card holders and todo entries of no stored card",
        """SELECT format('%s of %s', x."user", x.card_id), count(*) OVER () FROM"""
        ' (SELECT "user", card_id FROM card_holders UNION ALL'
        ' SELECT "user", card_id FROM card_pending) x'
        " WHERE NOT EXISTS (SELECT 1 FROM cards c WHERE c.id = x.card_id) ORDER BY 1 LIMIT 3",
    ),
    Invariant(
        "counters missing, or behind a number they already gave",
        "SELECT format('%s at %s, but %s was given', name, coalesce(value::text, 'missing'), top),"
        " count(*) OVER () FROM (SELECT 'card_gseq' AS name,"
        " (SELECT value FROM counters WHERE name = 'card_gseq') AS value,"
        " (SELECT coalesce(max(gseq), 0) FROM cards) AS top"
        " UNION ALL SELECT 'directory_change',"
        " (SELECT value FROM counters WHERE name = 'directory_change'),"
        " (SELECT coalesce(max(seq), 0) FROM directory_changes)"
        " UNION ALL SELECT 'directory_sync',"
        " (SELECT value FROM counters WHERE name = 'directory_sync'), 0) t"
        " WHERE value IS NULL OR value < top ORDER BY name",
    ),
)
"""What ``store check`` looks at beyond the schema; each is one query, most an index scan."""


@dataclass(frozen=True, slots=True)
class DatabaseReport:
    """A database ``store check`` found usable: its schema and version, the invariants checked."""

    schema: str
    schema_version: int
    invariants: int


async def check_database(conn: PgConn, describe: str) -> DatabaseReport:
    """:func:`check_schema`, then every :data:`INVARIANTS` on one read-only snapshot.

    Raises :class:`StoreDamaged` naming every invariant that does not hold
    (up to three offending rows of each). Reads only: safe while nodes serve.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await check_schema(conn, describe)
        schema: str = await conn.fetchval("SELECT current_schema()")
        checked = INVARIANTS if version == SCHEMA_VERSION else ()
        broken: list[str] = []
        for invariant in checked:
            rows = await conn.fetch(invariant.sql)
            if rows:
                shown = ", ".join(row[0] for row in rows)
                more = f" and {rows[0][1] - len(rows)} more" if rows[0][1] > len(rows) else ""
                broken.append(f"{invariant.broken}: {shown}{more}")
    if broken:
        raise StoreDamaged(describe, "; ".join(broken), _FIX_RESTORE)
    return DatabaseReport(schema, version, len(checked))
