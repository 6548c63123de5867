"""``audit verify`` / ``audit head``: the hash chain checked in either store."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from imserver.config import Config

if TYPE_CHECKING:
    from imserver.audit import Anchor, VerifyResult
from imserver.cli.context import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    load,
    postgres_connection,
)


async def _verify_audit_postgres(config: Config, anchor: Anchor | None) -> VerifyResult:
    """The schema checked first (refusing a newer one), then the chain on one snapshot, paged."""
    from imserver.store.postgres.audit import verify_on
    from imserver.store.postgres.pool import describe_dsn
    from imserver.store.postgres.schema_check import check_schema

    async with postgres_connection(config) as conn:
        await check_schema(conn, describe_dsn(config.store.dsn))
        return await verify_on(conn, anchor)


def verify_audit(config: Config, anchor: Anchor | None) -> VerifyResult:
    """Verify the chain in the configured store; ``StoreFileError`` if there is none to read.

    The file (or PostgreSQL schema) is checked first (header and schema, not
    its pages), so a missing, foreign or empty store is named as such rather
    than as an SQL error.
    """
    import sqlite3

    if config.store.backend == "postgres":
        return asyncio.run(_verify_audit_postgres(config, anchor))

    from imserver.errors import StoreDamaged
    from imserver.store.sqlite.audit import verify_database
    from imserver.store.sqlite.file_check import check_store_file

    path = config.sqlite_file
    check_store_file(path, check="off")
    try:
        return verify_database(path, anchor)
    except sqlite3.Error as e:
        fix = "run `python -m imserver store check`; restore a backup (docs/operations.md)"
        raise StoreDamaged(path, f"cannot read the audit log ({e})", fix) from None


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit chain; exit 0 if intact, 1 naming the first bad record."""
    from imserver.audit import parse_anchor

    config = load(args.config)
    try:
        anchor = None if args.head is None else parse_anchor(args.head)
    except ValueError as e:
        print(f"error: --head: {e}", file=sys.stderr)
        return EXIT_CONFIG
    result = verify_audit(config, anchor)
    if result.ok:
        anchored = "" if anchor is None else f"; anchor {anchor.seq} matches"
        print(f"ok: {result.checked} records verified; head hash {result.head_hash}{anchored}")
        return 0
    print(
        f"BROKEN at record {result.first_bad_seq}: {result.reason}"
        f" ({result.checked} records before it verified)"
    )
    return EXIT_CHECK_FAILED


def cmd_audit_head(args: argparse.Namespace) -> int:
    """Print ``SEQ:HASH`` of the verified chain's last record, for keeping outside the server.

    Verifies first: anchoring the head of a chain that is already broken would
    vouch for the tampering.
    """
    result = verify_audit(load(args.config), None)
    if not result.ok:
        print(
            f"BROKEN at record {result.first_bad_seq}: {result.reason}; not printing a head",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    print(f"{result.checked}:{result.head_hash}")
    return 0
