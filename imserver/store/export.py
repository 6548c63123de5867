"""Moving an embedded SQLite deployment into an empty PostgreSQL database, all or nothing.

``python -m imserver store export-postgres --dsn …`` (docs/operations.md,
"Moving from the embedded store to PostgreSQL"). Why a table-by-table copy
rather than replaying through the ``Store`` interface: replaying would mint
new seqs, timestamps, outbox ids and audit hashes; a copy keeps every value
as it is — conversation ``last_seq`` and read cursors, the card and
directory counters, sealed field tokens (the same keys open them), the audit
chain byte for byte — so clients resume where they were.

Safety:

* The SQLite file is held with an exclusive lock for the whole copy: a
  running server refuses the export (``StoreInUse``) and none can start
  meanwhile.
* The target must be empty (no tables) or a freshly migrated, unused store.
* Everything on the PostgreSQL side — migrations, rows, sequence counters —
  is one transaction, checked (row counts and content digests of every table)
  before it commits: any failure leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from imserver.errors import ExportRefused, StoreInUse
from imserver.store.export_rows import (
    Column,
    Table,
    TableDigest,
    UnconvertibleValue,
    convert_row,
)
from imserver.store.migrations import SCHEMA_VERSION
from imserver.store.postgres.jobs import PgConn
from imserver.store.postgres.pool import (
    CONNECTION_LOST,
    PoolSettings,
    create_pool,
    describe_dsn,
    lost,
)
from imserver.store.postgres.schema import applied_versions, migrate
from imserver.store.sqlite.file_check import check_store_file

BATCH_ROWS: Final = 5000
"""Rows per ``COPY`` (and per SQLite fetch): memory stays flat whatever the store's size."""

NOT_COPIED: Final = frozenset({"schema_migrations"})
"""Written by the target's own migrations; compared by version instead."""

SEEDED_BY_MIGRATIONS: Final = frozenset({"counters"})
"""Tables the migrations fill with starting rows, replaced by the SQLite rows."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What was copied: rows per table, and the identity counters set."""

    rows: dict[str, int]
    sequences: dict[str, int]


# -- SQLite side ------------------------------------------------------------------


def open_exclusive(path: Path) -> sqlite3.Connection:
    """A read connection holding every lock on ``path`` until closed; ``StoreInUse`` if busy.

    In exclusive locking mode, the first read inside ``BEGIN EXCLUSIVE`` takes
    locks that any other open connection (a running server, even idle) shares
    in: so a held file refuses, and no server can open the file while the
    export reads it.
    """
    report = check_store_file(path, check="quick")
    if report.schema_version != SCHEMA_VERSION:
        raise ExportRefused(
            path,
            f"the store is at schema version {report.schema_version}, this release at"
            f" {SCHEMA_VERSION}",
            "start the server of this release on it once (it migrates), stop it, then export",
        )
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as e:
        conn.close()
        if "locked" in str(e) or "busy" in str(e):
            raise StoreInUse(
                path,
                "it is open in another process (a running server?)",
                "stop the server, then export",
            ) from None
        raise
    return conn


def sqlite_tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    return {r[0] for r in rows}


def sqlite_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}


def sqlite_rows(conn: sqlite3.Connection, table: Table) -> Iterator[list[tuple[object, ...]]]:
    """The table's rows in key order, converted for PostgreSQL, in batches of ``BATCH_ROWS``."""
    columns = ", ".join(f'"{c}"' for c in table.column_names)
    order = ", ".join(f'"{c}"' for c in table.key)
    cursor = conn.execute(f'SELECT {columns} FROM "{table.name}" ORDER BY {order}')
    while batch := cursor.fetchmany(BATCH_ROWS):
        yield [convert_row(table, row) for row in batch]


def sqlite_digest(conn: sqlite3.Connection, table: Table) -> TableDigest:
    digest = TableDigest()
    for batch in sqlite_rows(conn, table):
        digest.add(batch)
    return digest


def sqlite_autoincrement(conn: sqlite3.Connection) -> dict[str, int]:
    """``sqlite_sequence``: the highest id ever given per AUTOINCREMENT table (≥ the max kept)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    if exists is None:
        return {}
    return {name: int(seq) for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence")}


# -- PostgreSQL side --------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[PgConn]:
    """One connection to the target; ``StoreUnavailable`` naming the host and fix if it fails.

    A pool of one, so the connection has the type every store function takes.
    """
    pool = await create_pool(PoolSettings(dsn, min_size=1, max_size=1))
    try:
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()


async def postgres_tables(conn: PgConn) -> dict[str, Table]:
    """Every table of the target's schema (``search_path``) with its columns and primary key."""
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    keys = await conn.fetch(
        "SELECT c.relname, a.attname FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indisprimary AND c.relnamespace = current_schema()::regnamespace"
        " ORDER BY c.relname, array_position(i.indkey::int2[], a.attnum)"
    )
    by_table: dict[str, list[Column]] = {}
    for r in columns:
        by_table.setdefault(r["table_name"], []).append(Column(r["column_name"], r["data_type"]))
    key_of: dict[str, list[str]] = {}
    for r in keys:
        key_of.setdefault(r["relname"], []).append(r["attname"])
    return {
        name: Table(name, tuple(cols), tuple(key_of.get(name, [c.name for c in cols])))
        for name, cols in by_table.items()
    }


def _order_by(table: Table) -> str:
    """PostgreSQL ``ORDER BY`` matching SQLite's: text compared byte by byte ("C")."""
    types = {c.name: c.pg_type for c in table.columns}
    return ", ".join(f'"{k}" COLLATE "C"' if types[k] == "text" else f'"{k}"' for k in table.key)


async def postgres_digest(conn: PgConn, table: Table) -> TableDigest:
    """Rows of ``table`` in key order (inside the caller's transaction), digested."""
    columns = ", ".join(f'"{c}"' for c in table.column_names)
    digest = TableDigest()
    query = f'SELECT {columns} FROM "{table.name}" ORDER BY {_order_by(table)}'
    async for record in conn.cursor(query, prefetch=BATCH_ROWS):
        digest.add([tuple(record)])
    return digest


async def identity_columns(conn: PgConn) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
        " ORDER BY table_name"
    )
    return [(r[0], r[1]) for r in rows]


async def refuse_unless_empty(conn: PgConn, dsn: str) -> None:
    """``ExportRefused`` unless the target has no tables, or is a migrated store never used.

    "Never used": at this release's schema version, every table empty but the
    counters the migrations seed, and those still 0. Anything else might be a
    live cluster's data, which an export must never mix into.
    """
    where = describe_dsn(dsn)
    versions = await applied_versions(conn)
    tables = await postgres_tables(conn)
    if not versions:
        if tables:
            raise ExportRefused(
                where,
                f"the target schema has tables ({', '.join(sorted(tables)[:5])}, …)"
                " but no imserver schema",
                "export into an empty database (createdb) or schema",
            )
        return
    if versions[-1] != SCHEMA_VERSION:
        raise ExportRefused(
            where,
            f"the target is at schema version {versions[-1]}, this release at {SCHEMA_VERSION}",
            "export into an empty database",
        )
    used = []
    for name in sorted(set(tables) - NOT_COPIED):
        if name in SEEDED_BY_MIGRATIONS:
            count = await conn.fetchval(f'SELECT count(*) FROM "{name}" WHERE value <> 0')
        else:
            count = await conn.fetchval(f'SELECT count(*) FROM "{name}"')
        if count:
            used.append(f"{name}: {count}")
    if used:
        raise ExportRefused(
            where,
            f"the target already holds data ({', '.join(used[:5])})",
            "export into an empty database; never into one a cluster uses",
        )


# -- the copy ---------------------------------------------------------------------


def plan(src: sqlite3.Connection, target: dict[str, Table]) -> list[Table]:
    """The tables to copy, in a fixed order; ``UnconvertibleValue`` if the schemas differ.

    The schema has no foreign keys, so any order loads; sorted by name for
    repeatable output, ``audit_log`` rows in seq order (its insert trigger
    accepts only the next link of the chain).
    """
    source = sqlite_tables(src) - NOT_COPIED
    wanted = set(target) - NOT_COPIED
    if source != wanted:
        raise UnconvertibleValue(
            f"the schemas differ: only in SQLite {sorted(source - wanted)},"
            f" only in PostgreSQL {sorted(wanted - source)}"
        )
    for name in sorted(source):
        missing = set(target[name].column_names) ^ sqlite_columns(src, name)
        if missing:
            raise UnconvertibleValue(f"the columns of {name} differ: {sorted(missing)}")
    return [target[name] for name in sorted(source)]


async def _copy_table(src: sqlite3.Connection, dst: PgConn, table: Table) -> int:
    if table.name in SEEDED_BY_MIGRATIONS:
        await dst.execute(f'DELETE FROM "{table.name}"')
    copied = 0
    for batch in sqlite_rows(src, table):
        await dst.copy_records_to_table(table.name, records=batch, columns=table.column_names)
        copied += len(batch)
    return copied


async def _set_identities(src: sqlite3.Connection, dst: PgConn) -> dict[str, int]:
    """Each identity counter past every id SQLite ever gave (so no id is handed out twice)."""
    given = sqlite_autoincrement(src)
    out: dict[str, int] = {}
    for table, column in await identity_columns(dst):
        top = await dst.fetchval(f'SELECT coalesce(max("{column}"), 0) FROM "{table}"')
        last = max(int(top), given.get(table, 0))
        sequence = await dst.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, column)
        if last > 0:
            await dst.execute("SELECT setval($1, $2, true)", sequence, last)
        out[f"{table}.{column}"] = last
    return out


async def _check_copied(src: sqlite3.Connection, dst: PgConn, tables: list[Table]) -> None:
    """Every table's row count and content digest equal on both sides, or ``ExportRefused``."""
    for table in tables:
        theirs = sqlite_digest(src, table)
        ours = await postgres_digest(dst, table)
        if (theirs.rows, theirs.hexdigest) != (ours.rows, ours.hexdigest):
            raise UnconvertibleValue(
                f"{table.name} differs after the copy ({theirs.rows} rows in SQLite,"
                f" {ours.rows} in PostgreSQL, or different values)"
            )


async def export_to_postgres(sqlite_path: Path, dsn: str) -> ExportResult:
    """Copy the stopped store at ``sqlite_path`` into the empty PostgreSQL ``dsn``, atomically."""
    src = open_exclusive(sqlite_path)
    try:
        async with connect(dsn) as dst:
            return await _export(src, dst, dsn)
    finally:
        src.close()  # ends the read transaction and drops the exclusive lock


async def _export(src: sqlite3.Connection, dst: PgConn, dsn: str) -> ExportResult:
    try:
        async with dst.transaction():
            await refuse_unless_empty(dst, dsn)
            await migrate(dst)  # nested: a savepoint; holds the migration lock until commit
            await refuse_unless_empty(dst, dsn)  # nobody slipped in before the lock
            tables = plan(src, await postgres_tables(dst))
            rows = {t.name: await _copy_table(src, dst, t) for t in tables}
            sequences = await _set_identities(src, dst)
            await _check_copied(src, dst, tables)
    except CONNECTION_LOST as e:  # the transaction died with the connection: nothing kept
        raise lost(describe_dsn(dsn), e) from e
    except (UnconvertibleValue, asyncpg.PostgresError) as e:
        raise ExportRefused(
            describe_dsn(dsn),
            f"nothing was written: {type(e).__name__}: {e}",
            "fix the cause and run the export again",
        ) from None
    return ExportResult(rows, sequences)
