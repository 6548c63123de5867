"""The store's database file: refuse one that is not ours or is damaged; create one atomically.

Why at all: SQLite happily opens anything. A zero-length file is an empty
database to it, so a truncated store used to start as a fresh install; a
store with damaged pages used to serve whatever rows it could still reach —
``sync`` silently returned 63 of 400 messages and the next send reused a seq
clients already held. Both are worse than not starting: clients trust what
the server says it has. So before the writer touches the file, start-up
checks, cheapest first, and stops with one line naming the file and the fix:

1. zero length (:class:`~imserver.errors.StoreEmpty`) — never produced by
   imserver itself, because a new store is built under a temporary name and
   linked into place complete (:func:`create_store_file`);
2. the 16-byte SQLite header (:class:`~imserver.errors.StoreNotSqlite`);
3. SQLite's own ``PRAGMA quick_check`` (or the full ``integrity_check``, or
   none: ``store.integrity_check``) (:class:`~imserver.errors.StoreDamaged`);
4. the schema: our ``schema_migrations`` table, versions this release knows
   (:class:`~imserver.errors.StoreTooNew`), and every table those versions
   create (:class:`~imserver.errors.StoreForeign` / ``StoreDamaged``).

A missing file is a new install; a SQLite file with no tables at all holds
nothing and is initialised like one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from imserver.errors import (
    NoDatabaseYet,
    StoreDamaged,
    StoreEmpty,
    StoreForeign,
    StoreNotSqlite,
    StoreRefused,
)
from imserver.store.migrations import refuse_newer
from imserver.store.sqlite.schema import MIGRATIONS

SQLITE_HEADER: Final = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite 3 database file (sqlite.org/fileformat.html)."""

INTEGRITY_CHECKS: Final = ("quick", "full", "off")
"""``store.integrity_check`` values: ``quick`` runs ``PRAGMA quick_check`` at
start (O(file size), skips index-content checks), ``full`` the slower
``integrity_check``, ``off`` only the header and schema checks."""

SIDE_FILES: Final = ("-wal", "-shm", "-journal")
"""Files SQLite keeps next to a database; they belong to that file alone."""

_MAX_REPORTED: Final = 20
"""Most problems the integrity pragmas list: enough to diagnose, bounded output."""

_NOT_OURS_TABLES: Final = frozenset({"schema_migrations", "audit_log", "sqlite_sequence"})
"""Tables a store may hold before its first migration commits."""

_FIX_RESTORE: Final = (
    "stop and restore the last good backup (docs/operations.md, 'Backup and restore');"
    " `python -m imserver store check` prints the full report"
)
_FIX_PATH: Final = (
    "check store.sqlite_path / server.data_dir point at imserver's database, or restore it"
    " from a backup (docs/operations.md)"
)


@dataclass(frozen=True, slots=True)
class StoreFileReport:
    """What a check found in a usable store file."""

    path: Path
    schema_version: int  # highest applied migration; 0: a new, empty database
    integrity: str  # "ok" (per ``check``), or "skipped" when ``check`` is "off"
    check: str  # one of INTEGRITY_CHECKS
    page_count: int


def side_file(path: Path, suffix: str) -> Path:
    """``imserver.db`` → ``imserver.db-wal`` (SQLite appends, it does not replace)."""
    return path.with_name(path.name + suffix)


@contextlib.contextmanager
def _query_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that will not change the data (read-write only so WAL recovery works)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA query_only = ON")
        yield conn
    finally:
        conn.close()


def check_store_file(path: Path, *, check: str = "quick") -> StoreFileReport:
    """Check the file at ``path`` is a usable imserver store; raise a ``StoreRefused`` if not.

    Raises :class:`~imserver.errors.NoDatabaseYet` when there is no file (the
    server creates one; the CLI's read-only commands say so). Changes nothing.
    """
    if check not in INTEGRITY_CHECKS:
        raise ValueError(f"integrity check {check!r} is not one of {INTEGRITY_CHECKS}")
    _check_header(path)
    try:
        with _query_only(path) as conn:
            integrity = "skipped" if check == "off" else _check_integrity(path, conn, check)
            version = _check_schema(path, conn)
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
    except sqlite3.DatabaseError as e:
        raise _unreadable(path, e) from None
    return StoreFileReport(path, version, integrity, check, int(pages))


def _unreadable(path: Path, error: sqlite3.DatabaseError) -> StoreRefused:
    """Damage (pages SQLite cannot even parse) or an obstacle (permissions, a lock, I/O)."""
    name = getattr(error, "sqlite_errorname", "")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or type(error) is sqlite3.DatabaseError:
        return StoreDamaged(path, f"SQLite cannot read it ({error})", _FIX_RESTORE)
    return StoreRefused(
        path,
        f"SQLite cannot open or read it ({error})",
        "check the file's and its directory's permissions, free disk space, and that no"
        " other program holds it locked",
    )


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        raise NoDatabaseYet(path) from None
    if not header:
        raise StoreEmpty(
            path,
            "the file is empty (0 bytes) — truncated, or created by hand",
            "restore it from a backup (docs/operations.md); if you put an empty file there"
            " on purpose, start once with `python -m imserver serve --init`",
        )
    if header != SQLITE_HEADER:
        raise StoreNotSqlite(
            path, "not a SQLite database (it does not start with 'SQLite format 3')", _FIX_PATH
        )


def _check_integrity(path: Path, conn: sqlite3.Connection, check: str) -> str:
    pragma = "quick_check" if check == "quick" else "integrity_check"
    rows = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}({_MAX_REPORTED})")]
    if rows != ["ok"]:
        # One row may hold several lines, under a "*** in database main ***" banner.
        problems = [
            line.strip()
            for line in "\n".join(rows).splitlines()
            if line.strip() and not line.startswith("***")
        ] or ["(no details)"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StoreDamaged(path, f"PRAGMA {pragma} failed: {problems[0]}{more}", _FIX_RESTORE)
    return "ok"


def _check_schema(path: Path, conn: sqlite3.Connection) -> int:
    """The applied schema version; raises if the schema is not (all of) ours."""
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_migrations" not in tables:
        if tables <= _NOT_OURS_TABLES:
            return 0  # nothing in it yet: a new store
        raise StoreForeign(
            path,
            "a SQLite database without imserver's schema_migrations table"
            f" (it has tables {_names(tables)})",
            _FIX_PATH,
        )
    columns = [row[1] for row in conn.execute("PRAGMA table_info(schema_migrations)")]
    if columns != ["version", "description", "applied_at"]:
        raise StoreForeign(
            path,
            f"its schema_migrations table is not imserver's (columns {', '.join(columns)})",
            _FIX_PATH,
        )
    applied = sorted(int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations"))
    refuse_newer(path, applied)
    if not applied:
        if tables <= _NOT_OURS_TABLES:
            return 0
        raise StoreForeign(
            path,
            f"no schema version recorded, yet it has tables {_names(tables - _NOT_OURS_TABLES)}",
            _FIX_PATH,
        )
    missing = expected_tables(tuple(applied)) - tables
    if missing:
        raise StoreDamaged(
            path,
            f"schema version {applied[-1]} but tables {_names(missing)} are missing",
            _FIX_RESTORE,
        )
    return applied[-1]


def _names(tables: set[str] | frozenset[str]) -> str:
    shown = sorted(tables)
    return ", ".join(shown[:8]) + (", …" if len(shown) > 8 else "")


@functools.lru_cache(maxsize=8)
def expected_tables(applied: tuple[int, ...]) -> frozenset[str]:
    """Tables that the migrations ``applied`` create, found by running them in memory.

    Derived rather than listed so a new migration needs no second list here.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for version, _, sql in MIGRATIONS:
            if version in applied:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        return frozenset(
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        )
    finally:
        conn.close()


def create_store_file(path: Path, prepare: Callable[[sqlite3.Connection], None]) -> None:
    """Create a new store at ``path``, complete or not at all.

    ``prepare`` builds the schema on a connection to a temporary file, which
    is then hard-linked to ``path``: a crash mid-way leaves no file (or a
    stray temporary one), never a half-made or zero-length store — so a
    zero-length store always means damage. ``link`` rather than ``rename``
    refuses to replace a store another process created meanwhile.
    """
    tmp = path.with_name(f"{path.name}.creating-{os.getpid()}")
    _remove_with_side_files(tmp)
    conn = sqlite3.connect(tmp, isolation_level=None, timeout=30.0)
    try:
        prepare(conn)
    finally:
        conn.close()  # the last connection: checkpoints and removes -wal / -shm
    try:
        fsync_path(tmp)
        with contextlib.suppress(FileExistsError):  # another process won: use its store
            publish_file(tmp, path)
        fsync_path(path.parent)
    finally:
        _remove_with_side_files(tmp)


def publish_file(tmp: Path, path: Path) -> None:
    """Give the finished file ``tmp`` the name ``path``, never replacing an existing one.

    A hard link is atomic and fails if ``path`` exists. On a file system
    without hard links (some network and FAT mounts) fall back to a rename
    after checking — a small race, but such mounts are no place for SQLite's
    locking either. Raises ``FileExistsError`` if ``path`` exists.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)


def initialise_empty_store_file(path: Path) -> bool:
    """``serve --init``: remove a zero-length store so start-up creates a new one.

    Only ever removes a zero-length file (and its empty or absent side
    files): anything holding bytes is left for the normal checks to judge.
    Returns whether it removed one.
    """
    try:
        if path.stat().st_size != 0:
            return False
    except FileNotFoundError:
        return False
    wal = side_file(path, "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreEmpty(
            path,
            f"the file is empty but its write-ahead log {wal.name} is not",
            "restore from a backup (docs/operations.md); --init will not discard a log",
        )
    _remove_with_side_files(path)
    return True


def _remove_with_side_files(path: Path) -> None:
    for suffix in ("", *SIDE_FILES):
        side_file(path, suffix).unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a directory after a link) to disk before relying on it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
