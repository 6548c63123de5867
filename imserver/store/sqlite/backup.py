"""Copies of the store: online backup with SQLite's backup API (safe while serving), restore.

Why not ``cp``: copying the file of a live WAL database can catch the main
file and its ``-wal`` at different moments and produce a store that is
damaged or silently older. ``sqlite3.Connection.backup`` copies the pages of
one read snapshot instead; in WAL mode that snapshot blocks no writer, so the
server keeps acknowledging messages meanwhile. Everything acknowledged before
the backup started is in it; later writes are not (they are in the next one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from imserver.errors import StoreInUse
from imserver.store.sqlite.file_check import (
    SIDE_FILES,
    StoreFileReport,
    check_store_file,
    fsync_path,
    publish_file,
    side_file,
)


def backup_store_file(source: Path, target: Path) -> StoreFileReport:
    """Copy the store at ``source`` to the new file ``target``; return the copy's check.

    The source must be a usable store (header and schema; its pages are judged
    on the copy). The copy is written under a temporary name, switched out of
    WAL mode so it is one self-contained file, checked with the full
    ``integrity_check`` and only then linked to ``target`` — a backup that
    exists is a backup that passed. Raises ``FileExistsError`` rather than
    overwrite ``target``, and ``StoreRefused`` if the source or the copy is
    not sound (the temporary file is removed).
    """
    check_store_file(source, check="off")
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose a new name")
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        _copy_snapshot(source, partial)
        report = check_store_file(partial, check="full")
        fsync_path(partial)
        publish_file(partial, target)  # refuses to replace a file created meanwhile
        fsync_path(target.parent)
    finally:
        for suffix in ("", *SIDE_FILES):
            side_file(partial, suffix).unlink(missing_ok=True)
    return StoreFileReport(
        target, report.schema_version, report.integrity, "full", report.page_count
    )


def _copy_snapshot(source: Path, partial: Path) -> None:
    src = sqlite3.connect(source, isolation_level=None, timeout=30.0)
    try:
        src.execute("PRAGMA busy_timeout = 30000")
        src.execute("PRAGMA query_only = ON")
        with contextlib.closing(sqlite3.connect(partial, isolation_level=None)) as dst:
            # pages=-1: every page in one step, from one snapshot. Stepping in
            # chunks would restart whenever the server commits in between.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        src.close()


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """Where things went: the restored store and the file it replaced (if any)."""

    restored: StoreFileReport
    replaced: Path | None  # the previous store, moved aside under this name


def restore_store_file(backup: Path, path: Path) -> RestoreReport:
    """Put a copy of ``backup`` at ``path``, moving the current store (and its side files) aside.

    The backup must pass the full check first. The current store must not be
    open anywhere: a running server would go on writing to the file moved
    aside and lose those writes at its next start, so an exclusive lock is
    tried first and a held one refuses the restore (``StoreInUse``). Nothing
    is deleted: the previous file stays next to the new one as
    ``<name>.replaced-<UTC time>``, with its ``-wal`` and ``-shm`` — which
    must move with it, or SQLite would apply the old log to the restored file.
    """
    check_store_file(backup, check="full")
    if path.exists():
        _refuse_if_open(path)
    partial = path.with_name(f"{path.name}.restoring-{os.getpid()}")
    try:
        # Copy first: if that fails (disk full), the current store is still in place.
        shutil.copyfile(backup, partial)
        fsync_path(partial)
        copied = check_store_file(partial, check="quick")
        replaced = _move_aside(path)
        publish_file(partial, path)
        fsync_path(path.parent)
    finally:
        partial.unlink(missing_ok=True)
    restored = StoreFileReport(
        path, copied.schema_version, copied.integrity, copied.check, copied.page_count
    )
    return RestoreReport(restored, replaced)


def _move_aside(path: Path) -> Path | None:
    """Rename the store and its side files to ``<name>.replaced-<UTC time>``; None if none."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    replaced = path.with_name(f"{path.name}.replaced-{stamp}")
    for suffix in ("", *SIDE_FILES):
        if side_file(path, suffix).exists():
            os.replace(side_file(path, suffix), side_file(replaced, suffix))
    return replaced


def _refuse_if_open(path: Path) -> None:
    """Raise ``StoreInUse`` if another connection (a running server) has ``path`` open.

    In exclusive locking mode ``BEGIN EXCLUSIVE`` needs every lock on the
    file, which any open WAL connection — even an idle one — holds a share of.
    A file too damaged for SQLite to lock cannot be served either; it is
    moved aside without this proof.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise StoreInUse(
                path,
                "it is open in another process (a running server?)",
                "stop the server, then restore",
            ) from None
    except sqlite3.DatabaseError:
        pass  # damaged beyond locking: nothing can be serving it
    finally:
        conn.close()
