"""The hash-chained audit log as an append-only table in the PostgreSQL store.

The same rules as ``imserver/store/sqlite/audit.py`` (records sealed by
:mod:`imserver.audit.chain`; the record commits with the change it
describes), made safe for several nodes appending at once: the head of the
chain is read under a transaction-scoped advisory lock, so two nodes can never
both extend the same head. Triggers refuse ``UPDATE``, ``DELETE``,
``TRUNCATE`` and any ``INSERT`` that does not extend the chain.
"""

from __future__ import annotations

from typing import Any, Final

from imserver.audit.chain import (
    APPEND_ONLY,
    GENESIS,
    RECORD_COLUMNS,
    Anchor,
    AuditRecord,
    VerifyResult,
    record_from_row,
    record_row,
    seal,
    verify_rows,
)
from imserver.store.audit_log import AuditLogBase
from imserver.store.postgres.jobs import PgConn

AUDIT_LOCK: Final = 0x1A5E_A0D1
"""``pg_advisory_xact_lock`` key that serialises appends across nodes."""


_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS audit_log (
    seq        BIGINT PRIMARY KEY CHECK (seq >= 1),
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    algorithm  TEXT NOT NULL
);
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
    present = await conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('audit_log')"
        " AND tgname = ANY($1::text[])",
        list(_TRIGGERS),
    )
    if present != len(_TRIGGERS):
        await conn.execute(_SCHEMA)


async def last_record(conn: PgConn) -> AuditRecord | None:
    row = await conn.fetchrow(f"SELECT {RECORD_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1")
    return None if row is None else record_from_row(row)


class PostgresAuditLog(AuditLogBase):
    """Append-only, hash-chained audit log in the PostgreSQL store (``SqliteAuditLog``'s twin)."""

    last_in = staticmethod(last_record)

    async def append_in(
        self,
        conn: PgConn,
        at: int,
        actor: str,
        action: str,
        target: str,
        details: dict[str, Any],
        algorithm: str | None = None,
    ) -> AuditRecord:
        """Seal and insert the next record inside the caller's transaction.

        The advisory lock is held until that transaction ends, so no other
        node reads the same head meanwhile; a transaction that rolls back
        takes its record (and the lock) with it, leaving no hole.
        """
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
        record = seal(
            await last_record(conn), at, actor, action, target, details, algorithm or self.algorithm
        )
        await conn.execute(
            f"INSERT INTO audit_log ({RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            *record_row(record),
        )
        return record

    async def records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Up to ``limit`` records with seq > ``after_seq``, oldest first (for paging)."""

        async def job(conn: PgConn) -> list[AuditRecord]:
            rows = await conn.fetch(
                f"SELECT {RECORD_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                after_seq,
                limit,
            )
            return [record_from_row(r) for r in rows]

        result: list[AuditRecord] = await self._read(job)
        return result

    async def verify(self, anchor: Anchor | None = None) -> VerifyResult:
        """Verify the whole chain as of one snapshot (and against ``anchor``, if given).

        The records of the snapshot are held in memory while verifying: about
        half a kilobyte each.
        """

        async def job(conn: PgConn) -> VerifyResult:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                everything = f"SELECT {RECORD_COLUMNS} FROM audit_log ORDER BY seq"
                rows = [r async for r in conn.cursor(everything)]
            return verify_rows(rows, anchor)

        result: VerifyResult = await self._read(job)
        return result
