"""The audit log as an append-only table in the store's SQLite database.

Why in the same database rather than a file of its own: the action and its
audit record must commit together. An admin action whose record was lost in a
crash — or a record of an action that rolled back — would make the log lie.
So :meth:`SqliteAuditLog.append_in` runs *inside* a store write job (the same
transaction as the change it records) and :meth:`SqliteAuditLog.append` goes
through the store's writer, joining its group commit.

"Append-only" is enforced at two levels:

* Triggers refuse ``UPDATE`` and ``DELETE`` and any ``INSERT`` that does not
  extend the chain (next seq, ``prev_hash`` = last hash) — which also blocks
  ``INSERT OR REPLACE``, whose implicit delete fires no delete trigger. This
  stops bugs and casual edits.
* The hash chain (:mod:`imserver.audit.chain`) catches what triggers cannot:
  anyone with the file can drop a trigger. ``verify`` names the first record
  that no longer fits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

from imserver.audit.chain import (
    APPEND_ONLY,
    GENESIS,
    Anchor,
    AuditRecord,
    VerifyResult,
    record_from_row,
    record_row,
    verify_rows,
)
from imserver.store.audit_log import AuditLogBase, SealNext, audit_statements

SQL: Final = audit_statements("INTEGER", lambda _: "?", at_check=" CHECK (typeof(at) = 'integer')")
"""The table and statements (shared with PostgreSQL's), in SQLite's types and ``?`` style."""

SCHEMA_STATEMENTS: Final[tuple[str, ...]] = (
    SQL.table,
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_update
BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, '{APPEND_ONLY}: UPDATE refused');
END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_delete
BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, '{APPEND_ONLY}: DELETE refused');
END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_extend_only
BEFORE INSERT ON audit_log
WHEN NEW.seq IS NOT coalesce((SELECT max(seq) FROM audit_log), 0) + 1
  OR NEW.prev_hash IS NOT coalesce(
       (SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), '{GENESIS}')
BEGIN
    SELECT RAISE(ABORT, '{APPEND_ONLY}: INSERT must extend the chain');
END""",
)
"""The schema as separate complete statements, for running one by one inside
an existing transaction. Trigger bodies contain ``;``, so the combined
:data:`SCHEMA_SQL` must not be split on ``;`` (as ``sqlite_schema.migrate``
does) — use these, or :func:`create_schema`."""

SCHEMA_SQL: Final = "\n".join(f"{statement};" for statement in SCHEMA_STATEMENTS)
"""The whole schema as one script (``executescript``-ready). Idempotent."""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the table and triggers if missing, within the caller's transaction (if any).

    Statement by statement rather than ``executescript``, which would commit
    whatever transaction the caller has open.
    """
    for statement in SCHEMA_STATEMENTS:
        conn.execute(statement)


def _rows(conn: sqlite3.Connection, after_seq: int = 0) -> Iterator[tuple[Any, ...]]:
    """Stored rows with seq > ``after_seq`` in seq order, stepped one by one.

    One ``SELECT``: constant memory, and (in WAL mode) one consistent snapshot
    even while the writer keeps appending.
    """
    cursor = conn.execute(SQL.after, (after_seq,))
    try:
        yield from cursor
    finally:
        cursor.close()


def iter_records(conn: sqlite3.Connection, after_seq: int = 0) -> Iterator[AuditRecord]:
    """Stream records with seq > ``after_seq`` in seq order (constant memory, one snapshot)."""
    for row in _rows(conn, after_seq):
        yield record_from_row(row)


def newest_row(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
    """The newest stored row, or ``None`` when the log is empty."""
    row: tuple[Any, ...] | None = conn.execute(SQL.newest).fetchone()
    return row


def verify_database(path: Path | str, anchor: Anchor | None = None) -> VerifyResult:
    """Verify the audit chain in the SQLite file at ``path``, read-only.

    For ``python -m imserver audit verify``: needs no store threads and cannot
    modify the file (or create it when the path is wrong — that raises
    ``sqlite3.OperationalError``, as does a database without ``audit_log``).
    Safe while the server runs: WAL readers do not block the writer. With an
    ``anchor`` (``audit head`` noted earlier) a truncated or rewritten tail fails too.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
    try:
        return verify_rows(_rows(conn), anchor)
    finally:
        conn.close()


class SqliteAuditLog(AuditLogBase[sqlite3.Connection, AuditRecord]):
    """Append-only, hash-chained audit log in the store's SQLite database.

    ``write`` and ``read`` run jobs on the store's writer and reader threads
    (``SqliteStore._write`` / ``_read``). All appends go through the single
    writer, so reading the last record and inserting the next cannot race; the
    insert trigger would refuse a racing append from another process anyway.
    ``append_in`` is synchronous here: it runs on the writer thread.
    """

    SCHEMA_SQL: ClassVar[str] = SCHEMA_SQL

    create_schema = staticmethod(create_schema)
    iter_all = staticmethod(iter_records)
    last_in = staticmethod(newest_row)

    def extend_in(self, conn: sqlite3.Connection, seal_next: SealNext) -> AuditRecord:
        """Insert ``seal_next(head)``; on a connection with no open transaction, in its own.

        That transaction is ``BEGIN IMMEDIATE``: it takes the write lock
        before reading the head, so no other connection extends it meanwhile.
        """
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            try:
                record = self.extend_in(conn, seal_next)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return record
        record = seal_next(newest_row(conn))
        conn.execute(SQL.insert, record_row(record))
        return record

    @staticmethod
    def page_in(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = conn.execute(SQL.page, (after_seq, limit)).fetchall()
        return rows

    @staticmethod
    def verify_in(conn: sqlite3.Connection, anchor: Anchor | None) -> VerifyResult:
        """One ``SELECT`` stepped row by row (constant memory) on the reader thread.

        It occupies the reader for the duration (roughly a second per few
        hundred thousand records); for large logs prefer
        :func:`verify_database` on a connection of its own.
        """
        return verify_rows(_rows(conn), anchor)
