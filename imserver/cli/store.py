"""``store check | backup | restore | export-postgres``: the database, as an operator handles it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from imserver.cli.context import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    load,
    postgres_connection,
)
from imserver.config import Config
from imserver.errors import StoreRefused


def _check_postgres(config: Config) -> int:
    """``store check`` on PostgreSQL: schema and version, then invariants the server relies on."""
    from imserver.store.migrations import SCHEMA_VERSION
    from imserver.store.postgres.pool import describe_dsn
    from imserver.store.postgres.schema_check import DatabaseReport, check_database

    describe = describe_dsn(config.store.dsn)

    async def run() -> DatabaseReport:
        async with postgres_connection(config) as conn:
            return await check_database(conn, describe)

    try:
        report = asyncio.run(run())
    except StoreRefused as e:
        print(f"BAD: {e}")
        return EXIT_CHECK_FAILED
    checked = (
        f"{report.invariants} invariants hold"
        if report.schema_version == SCHEMA_VERSION
        else f"older than this release's {SCHEMA_VERSION} (migrated at the next start),"
        " invariants not checked"
    )
    print(
        f"ok: {describe} (schema {report.schema}): schema version {report.schema_version},"
        f" tables, indexes and audit triggers present, {checked}"
    )
    return 0


def _refused_on_postgres(config: Config, command: str, tool: str) -> int | None:
    """``EXIT_CONFIG`` and the way to do it when the store is PostgreSQL; ``None`` for SQLite.

    ``store backup`` / ``restore`` copy the SQLite file; a PostgreSQL
    database has its own tools, which also do it consistently while nodes write.
    """
    if config.store.backend != "postgres":
        return None
    from imserver.store.postgres.pool import describe_dsn

    print(
        f"error: store {command} copies the SQLite file, but this config's store is PostgreSQL"
        f" at {describe_dsn(config.store.dsn)}: use {tool}, or PostgreSQL's own base backups"
        ' with WAL archiving (point-in-time recovery); see docs/cluster.md, "PostgreSQL"',
        file=sys.stderr,
    )
    return EXIT_CONFIG


def cmd_store_check(args: argparse.Namespace) -> int:
    """Full check of the store or of a backup file (SQLite ``integrity_check``, or PostgreSQL's).

    A ``path`` is always a SQLite file, whatever the configured backend.
    """
    from imserver.store.sqlite.file_check import check_store_file

    config = None if args.path else load(args.config)
    if config is not None and config.store.backend == "postgres":
        return _check_postgres(config)
    path = Path(args.path) if config is None else config.sqlite_file
    try:
        report = check_store_file(path, check="full")
    except StoreRefused as e:
        print(f"BAD: {e}")
        return EXIT_CHECK_FAILED
    print(
        f"ok: {path}: integrity_check ok, schema version {report.schema_version},"
        f" {report.page_count} pages"
    )
    return 0


def cmd_store_backup(args: argparse.Namespace) -> int:
    """Online backup to a new file, checked before it is given its name."""
    import sqlite3

    from imserver.store.sqlite.backup import backup_store_file

    config = load(args.config)
    refused = _refused_on_postgres(config, "backup", "pg_dump (e.g. `pg_dump -Fc -f FILE`)")
    if refused is not None:
        return refused
    target = Path(args.path)
    if not target.parent.is_dir():
        print(f"error: no directory {target.parent} to write the backup in", file=sys.stderr)
        return EXIT_CONFIG
    try:
        report = backup_store_file(config.sqlite_file, target)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, sqlite3.OperationalError) as e:  # e.g. no permission, disk full
        print(f"error: cannot write the backup {target}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"ok: backup of {config.sqlite_file} written to {target}: integrity_check ok,"
        f" schema version {report.schema_version}, {report.page_count} pages"
    )
    return 0


def cmd_store_restore(args: argparse.Namespace) -> int:
    """Replace the (stopped) store with a checked backup; the old file is kept aside."""
    from imserver.store.sqlite.backup import restore_store_file

    config = load(args.config)
    refused = _refused_on_postgres(config, "restore", "pg_restore on a dump made by pg_dump")
    if refused is not None:
        return refused
    backup = Path(args.path)
    if not backup.exists():
        print(f"error: no backup file {backup}", file=sys.stderr)
        return EXIT_CONFIG
    report = restore_store_file(backup, config.sqlite_file)
    print(
        f"ok: restored {backup} to {config.sqlite_file} (schema version"
        f" {report.restored.schema_version}, integrity_check ok)"
    )
    if report.replaced is not None:
        print(f"the previous store was moved to {report.replaced} (with its -wal/-shm)")
    print(
        "anything stored after the backup was made is gone: have users sign out and in"
        " again, and note the new audit head (python -m imserver audit head)"
    )
    return 0


def cmd_store_export_postgres(args: argparse.Namespace) -> int:
    """Copy the stopped SQLite store into an empty PostgreSQL database, then verify the copy.

    Exit 0 only when every check matches; 1 when a check found a difference;
    3 when the export was refused (file in use, target not empty: nothing
    written); 5 when PostgreSQL cannot be reached.
    """
    from imserver.store.export import export_to_postgres
    from imserver.store.export_compare import verify_export
    from imserver.store.export_rows import summary_table
    from imserver.store.postgres.pool import describe_dsn

    config = load(args.config)
    target = describe_dsn(args.dsn)
    if not args.verify_only:
        result = asyncio.run(export_to_postgres(config.sqlite_file, args.dsn))
        print(
            f"copied {sum(result.rows.values())} rows in {len(result.rows)} tables"
            f" from {config.sqlite_file} to {target}"
        )
    checks = asyncio.run(verify_export(config.sqlite_file, args.dsn))
    print(summary_table(checks))
    if all(c.ok for c in checks):
        print(f"ok: {target} holds the same data as {config.sqlite_file}")
        return 0
    print(f"MISMATCH: {target} differs from {config.sqlite_file}; do not switch to it")
    return EXIT_CHECK_FAILED
