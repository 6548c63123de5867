"""The hash-chained audit log as an append-only table in the PostgreSQL store.

The same rules as ``imserver/store/sqlite/audit.py`` (records sealed by
:mod:`imserver.audit.chain`; the record commits with the change it
describes), made safe for several nodes appending at once: the head of the
chain is read under a transaction-scoped advisory lock, so two nodes can never
both extend the same head. Triggers refuse ``UPDATE``, ``DELETE``,
``TRUNCATE`` and any ``INSERT`` that does not extend the chain.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, Final

import asyncpg

from imserver.audit.chain import (
    APPEND_ONLY,
    GENESIS,
    Anchor,
    AuditRecord,
    VerifyResult,
    record_row,
    verify_rows,
)
from imserver.store.audit_log import AuditLogBase, SealNext, audit_statements
from imserver.store.postgres.jobs import PgConn

AUDIT_LOCK: Final = 0x1A5E_A0D1
"""``pg_advisory_xact_lock`` key that serialises appends across nodes."""

SQL: Final = audit_statements("BIGINT", lambda n: f"${n}")
"""The table and statements (shared with SQLite's), in PostgreSQL's types and ``$n`` style."""

VERIFY_PAGE: Final = 1000
"""Rows fetched at a time while verifying: about half a megabyte."""


_SCHEMA: Final = f"""
{SQL.table};
CREATE OR REPLACE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{APPEND_ONLY}: % refused', TG_OP;
END $$;
CREATE OR REPLACE FUNCTION audit_log_extend_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq  BIGINT;
    head_hash TEXT;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF NEW.seq IS DISTINCT FROM coalesce(head_seq, 0) + 1
       OR NEW.prev_hash IS DISTINCT FROM coalesce(head_hash, '{GENESIS}') THEN
        RAISE EXCEPTION '{APPEND_ONLY}: INSERT must extend the chain';
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
DROP TRIGGER IF EXISTS audit_log_extend_only ON audit_log;
CREATE TRIGGER audit_log_extend_only BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_extend_only();
"""


_TRIGGERS: Final = ("audit_log_extend_only", "audit_log_no_truncate", "audit_log_no_update")


async def create_audit_schema(conn: PgConn) -> None:
    """Create the table, its functions and triggers if any is missing; idempotent.

    Run at every open inside the migration transaction, as the SQLite store
    runs ``create_schema`` at every open. When all are there it changes
    nothing: replacing a trigger locks the table against every node's appends.
    """
    if await missing_audit_triggers(conn):
        await conn.execute(_SCHEMA)


async def missing_audit_triggers(conn: PgConn) -> list[str]:
    """The append-only triggers ``audit_log`` lacks or has disabled (all when there is no table).

    A disabled one (``ALTER TABLE ... DISABLE TRIGGER``) enforces nothing, so
    it counts as missing: ``store check`` names it, and the next open recreates it.
    """
    present = await conn.fetch(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('audit_log')"
        " AND tgname = ANY($1::text[]) AND tgenabled <> 'D'",
        list(_TRIGGERS),
    )
    return sorted(set(_TRIGGERS) - {row[0] for row in present})


async def newest_row(conn: PgConn) -> asyncpg.Record | None:
    """The newest stored row, or ``None`` when the log is empty."""
    row: asyncpg.Record | None = await conn.fetchrow(SQL.newest)
    return row


async def verify_on(conn: PgConn, anchor: Anchor | None = None) -> VerifyResult:
    """Verify the whole chain as of one snapshot, :data:`VERIFY_PAGE` rows in memory at a time.

    The check is :func:`~imserver.audit.chain.verify_rows` over one stream of
    rows, as on SQLite. That function is synchronous and the rows come from
    an asyncpg cursor, so it runs on a worker thread that asks this event
    loop for each next page; the loop stays free meanwhile (a node verifying
    keeps serving). Used by ``audit verify`` / ``audit head`` and by
    :meth:`PostgresAuditLog.verify`.
    """
    loop = asyncio.get_running_loop()
    done = threading.Event()  # set when the check ends here: the thread asks for no more pages
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(SQL.after, 0)

        def rows() -> Iterator[Any]:
            while not done.is_set():
                page = asyncio.run_coroutine_threadsafe(cursor.fetch(VERIFY_PAGE), loop).result()
                if not page:
                    return
                yield from page

        try:
            return await asyncio.to_thread(verify_rows, rows(), anchor)
        finally:
            done.set()


class PostgresAuditLog(AuditLogBase["PgConn", Awaitable[AuditRecord]]):
    """Append-only, hash-chained audit log in the PostgreSQL store (``SqliteAuditLog``'s twin).

    ``append_in`` gives an awaitable here: ``await log.append_in(conn, ...)``.
    """

    last_in = staticmethod(newest_row)
    verify_in = staticmethod(verify_on)

    async def extend_in(self, conn: PgConn, seal_next: SealNext) -> AuditRecord:
        """Insert ``seal_next(head)`` holding the append lock until the transaction ends.

        No other node reads the same head meanwhile; a transaction that rolls
        back takes its record (and the lock) with it, leaving no hole.
        """
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
        record = seal_next(await newest_row(conn))
        await conn.execute(SQL.insert, *record_row(record))
        return record

    @staticmethod
    async def page_in(conn: PgConn, after_seq: int, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(SQL.page, after_seq, limit)
        return rows
