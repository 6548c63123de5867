"""Command line: ``python -m imserver serve | token | user | audit | store | keys | governance``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from imserver.config import Config, load_config
from imserver.errors import (
    BusUnavailable,
    ConfigError,
    NoDatabaseYet,
    StoreFileError,
    StoreRefused,
    StoreUnavailable,
)
from imserver.log_format import setup_logging

if TYPE_CHECKING:
    from imserver.audit import Anchor, VerifyResult
    from imserver.store.postgres import PostgresStore
    from imserver.store.postgres.jobs import PgConn
    from imserver.store.sqlite.store import SqliteStore

DEFAULT_CONFIG = Path("config/default.toml")

# Exit codes (docs/operations.md, "Exit codes"). 1 is a check that ran and
# found a problem (audit verify, store check); the others say why a command
# could not do its work at all.
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
EXIT_STORE_REFUSED = 3
EXIT_NO_DATABASE = 4
EXIT_STORE_UNAVAILABLE = 5  # store.backend = "postgres" and the database cannot be reached


def _load(path: str | None) -> Config:
    chosen = path or os.environ.get("IMSERVER_CONFIG")
    if chosen is None and DEFAULT_CONFIG.exists():
        chosen = str(DEFAULT_CONFIG)
    return load_config(chosen)


def _setup_logging(level: str, fmt: str = "text") -> None:
    setup_logging(level, fmt)  # text, or one JSON object per line (server.log_format)


def _run(coro: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            logging.getLogger("imserver").info("uvloop not installed; using asyncio's loop")
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


async def _ensure_user(config: Config, user: str, name: str) -> None:
    store = _store(config)
    await store.open()
    try:
        await store.upsert_users([(user, name)], int(time.time() * 1000))
    finally:
        await store.close()


def _store(config: Config) -> SqliteStore | PostgresStore:
    """The store as the server opens it: same file, durability and start-up checks."""
    if config.store.backend == "postgres":  # the database the nodes share
        from imserver.app import build_store

        return build_store(config)
    from imserver.store.sqlite.store import SqliteStore

    return SqliteStore(
        config.sqlite_file,
        synchronous=config.store.sqlite_synchronous,
        integrity_check=config.store.integrity_check,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(config.server.log_level, config.server.log_format)
    from imserver.app import serve_until_signalled

    if args.init:
        from imserver.store.sqlite.file_check import initialise_empty_store_file

        if initialise_empty_store_file(config.sqlite_file):
            logging.getLogger("imserver").warning(
                "--init: removed the empty file %s; starting with a new store", config.sqlite_file
            )
    _run(serve_until_signalled(config), config.server.use_uvloop)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the OpenAPI 3.1 description (``> docs/openapi.json``; the server serves it too)."""
    from imserver.http.openapi import build_spec

    text = orjson.dumps(build_spec(), option=orjson.OPT_INDENT_2).decode()
    sys.stdout.write(text + "\n")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from imserver.protocol.fields import is_user_id
    from imserver.tokens import TokenSigner, load_or_create_secret

    config = _load(args.config)
    for what, value in (("--user", args.user), ("--device", args.device)):
        if not is_user_id(value):
            print(f"error: {what} must be 1-64 of A-Z a-z 0-9 _ . @ -", file=sys.stderr)
            return 2
    if not args.no_create:
        asyncio.run(_ensure_user(config, args.user, args.name or args.user))
    signer = TokenSigner(load_or_create_secret(config.auth.secret, config.data_path))
    print(signer.mint(args.user, args.device, args.ttl or config.auth.token_ttl_s))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from imserver.protocol.fields import is_user_id

    config = _load(args.config)
    bad = [u for u in args.users if not is_user_id(u)]
    if bad:
        print(f"error: invalid user id(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    for u in args.users:
        asyncio.run(_ensure_user(config, u, u))
    print(f"{len(args.users)} user(s) ready")
    return 0


@asynccontextmanager
async def _postgres_connection(config: Config) -> AsyncIterator[PgConn]:
    """One connection to the configured PostgreSQL for an operator command; migrates nothing.

    ``StoreUnavailable`` naming the host and the fix when it cannot connect,
    or when the connection is lost while the command runs.
    """
    from imserver.store.postgres.pool import (
        CONNECTION_LOST,
        PoolSettings,
        create_pool,
        describe_dsn,
        lost,
    )

    pool = await create_pool(PoolSettings(config.store.dsn, min_size=1, max_size=1))
    try:
        async with pool.acquire() as conn:
            yield conn
    except CONNECTION_LOST as e:
        pool.terminate()  # close() would wait on the lost connection
        raise lost(describe_dsn(config.store.dsn), e) from e
    except BaseException:
        pool.terminate()
        raise
    await pool.close()


async def _verify_audit_postgres(config: Config, anchor: Anchor | None) -> VerifyResult:
    """The schema checked first (refusing a newer one), then the chain on one snapshot, paged."""
    from imserver.store.postgres.audit import verify_on
    from imserver.store.postgres.pool import describe_dsn
    from imserver.store.postgres.schema import check_schema

    async with _postgres_connection(config) as conn:
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

    config = _load(args.config)
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
    result = verify_audit(_load(args.config), None)
    if not result.ok:
        print(
            f"BROKEN at record {result.first_bad_seq}: {result.reason}; not printing a head",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    print(f"{result.checked}:{result.head_hash}")
    return 0


def _check_postgres(config: Config) -> int:
    """``store check`` on PostgreSQL: schema and version, then invariants the server relies on."""
    from imserver.store.migrations import SCHEMA_VERSION
    from imserver.store.postgres.pool import describe_dsn
    from imserver.store.postgres.schema import DatabaseReport, check_database

    describe = describe_dsn(config.store.dsn)

    async def run() -> DatabaseReport:
        async with _postgres_connection(config) as conn:
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

    config = None if args.path else _load(args.config)
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

    config = _load(args.config)
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


def cmd_keys_add(args: argparse.Namespace) -> int:
    """Append a new field-encryption key and make it active (restart, then rotate)."""
    from imserver.field_protection import add_key

    config = _load(args.config)
    key_id = add_key(config, args.algorithm)
    print(f"added key {key_id} ({args.algorithm}); it is now active.")
    print("restart the server, then run: python -m imserver keys rotate")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every sealed value with the active key."""
    from imserver.field_protection import build_protector

    config = _load(args.config)
    protector = build_protector(config)

    async def run() -> tuple[int, int]:
        store = _store(config)
        await store.open()
        try:
            result = await store.rotate_sealed(protector)
            await store.audit.append(
                int(time.time() * 1000),
                "operator",
                "keys.rotate",
                protector.keyring.active_key_id,
                {"profiles": result[0], "cards": result[1]},
            )
            return result
        finally:
            await store.close()

    profiles, cards = asyncio.run(run())
    print(
        f"re-encrypted {profiles} profile(s) and {cards} card(s) with key "
        f"{protector.keyring.active_key_id}"
    )
    return 0


def cmd_governance_report(args: argparse.Namespace) -> int:
    """Print the group governance report (JSON or CSV) for the whole tree or one unit."""
    from imserver.governance import classify, to_csv, to_json
    from imserver.http.governance_api import rules_from

    config = _load(args.config)
    query = {
        k: str(v)
        for k, v in {
            "zombie_days": args.zombie_days,
            "empty_max_members": args.empty_max_members,
            "duplicate_threshold": args.duplicate_threshold,
            "min_age_days": args.min_age_days,
        }.items()
        if v is not None
    }
    rules = rules_from(query)

    async def run() -> str:
        store = _store(config)
        await store.open()
        try:
            scope = None
            if args.unit:
                unit = await store.get_unit(args.unit)
                if unit is None:
                    raise SystemExit(f"error: no unit {args.unit!r}")
                scope = [unit.path]
            findings = classify(await store.group_stats(scope), int(time.time() * 1000), rules)
        finally:
            await store.close()
        if args.format == "csv":
            return to_csv(findings)
        return orjson.dumps(to_json(findings), option=orjson.OPT_INDENT_2).decode()

    sys.stdout.write(asyncio.run(run()) + "\n")
    return 0


def cmd_store_restore(args: argparse.Namespace) -> int:
    """Replace the (stopped) store with a checked backup; the old file is kept aside."""
    from imserver.store.sqlite.backup import restore_store_file

    config = _load(args.config)
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

    config = _load(args.config)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imserver", description=__doc__)
    p.add_argument("--config", help="TOML config file (default: config/default.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the WebSocket gateway and HTTP API")
    s.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    s.add_argument(
        "--init",
        action="store_true",
        help="if the database file is empty (0 bytes), replace it with a new store",
    )
    s.set_defaults(func=cmd_serve)

    o = sub.add_parser("openapi", help="print the HTTP API's OpenAPI 3.1 description (JSON)")
    o.set_defaults(func=cmd_openapi)
    t = sub.add_parser("token", help="mint a user token for development (creates the user)")
    t.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    t.add_argument("--user", required=True)
    t.add_argument("--device", required=True)
    t.add_argument("--name", help="display name for a new user")
    t.add_argument("--ttl", type=int, help="lifetime in seconds (default: auth.token_ttl_s)")
    t.add_argument("--no-create", action="store_true", help="do not create the user")
    t.set_defaults(func=cmd_token)

    u = sub.add_parser("user", help="manage users")
    usub = u.add_subparsers(dest="user_command", required=True)
    ua = usub.add_parser("add", help="create users")
    ua.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ua.add_argument("users", nargs="+")
    ua.set_defaults(func=cmd_user_add)
    a = sub.add_parser("audit", help="the audit log")
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser("verify", help="check the hash chain; names the first broken record")
    av.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    av.add_argument(
        "--head", metavar="SEQ:HASH", help="a head printed earlier by `audit head`: must be there"
    )
    av.set_defaults(func=cmd_audit_verify)
    ah = asub.add_parser("head", help="verify, then print SEQ:HASH of the last record to anchor")
    ah.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ah.set_defaults(func=cmd_audit_head)
    st = sub.add_parser("store", help="the database file")
    stsub = st.add_subparsers(dest="store_command", required=True)
    sc = stsub.add_parser("check", help="full integrity check; exit 0 ok, 1 not usable")
    sc.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sc.add_argument("path", nargs="?", help="a database file (default: the configured store)")
    sc.set_defaults(func=cmd_store_check)
    sb = stsub.add_parser("backup", help="online backup to a new file (safe while serving)")
    sb.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sb.add_argument("path", help="the backup file to create (must not exist)")
    sb.set_defaults(func=cmd_store_backup)
    sr = stsub.add_parser("restore", help="replace the stopped store with a backup (kept aside)")
    sr.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sr.add_argument("path", help="a backup made by `store backup`")
    sr.set_defaults(func=cmd_store_restore)
    se = stsub.add_parser(
        "export-postgres",
        help="copy the stopped store into an empty PostgreSQL database and verify it",
    )
    se.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    se.add_argument("--dsn", required=True, help="postgresql://USER@HOST:PORT/DATABASE (empty)")
    se.add_argument(
        "--verify-only", action="store_true", help="only compare the two stores; copy nothing"
    )
    se.set_defaults(func=cmd_store_export_postgres)
    g = sub.add_parser("governance", help="work-group governance")
    gsub = g.add_subparsers(dest="governance_command", required=True)
    gr = gsub.add_parser("report", help="zombie, empty-shell and duplicate groups")
    gr.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    gr.add_argument("--unit", help="only groups of this unit's subtree")
    gr.add_argument("--format", choices=("json", "csv"), default="json")
    gr.add_argument("--zombie-days", type=int)
    gr.add_argument("--empty-max-members", type=int)
    gr.add_argument("--duplicate-threshold", type=float)
    gr.add_argument("--min-age-days", type=int)
    gr.set_defaults(func=cmd_governance_report)

    k = sub.add_parser("keys", help="field-encryption keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ka = ksub.add_parser("add", help="add a new active key to <data_dir>/field.keys")
    ka.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ka.add_argument("--algorithm", choices=("aes-256-gcm", "sm4-gcm"), default="aes-256-gcm")
    ka.set_defaults(func=cmd_keys_add)
    kr = ksub.add_parser("rotate", help="re-encrypt sealed values with the active key")
    kr.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    kr.set_defaults(func=cmd_keys_rotate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreFileError as e:  # one line naming the file and the fix; no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_DATABASE if isinstance(e, NoDatabaseYet) else EXIT_STORE_REFUSED
    except (StoreUnavailable, BusUnavailable) as e:  # one line naming the host and the fix
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_STORE_UNAVAILABLE
    return code
