"""SQLite side of the organisation directory.

A mixin of :class:`imserver.store.sqlite.SqliteStore`. A sync is applied in
batches, one write job each; every row a sync touches gets the sync's
generation number, so a full sync ends with a sweep of whatever it did not
touch. Subtrees are path ranges: ``path >= '/jx/nc/' AND path < '/jx/nc/\\x7f'``
(ids and ``/`` are ASCII below 0x7f), which the ``units_by_path`` index serves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import orjson

from imserver.directory.model import (
    MemberOp,
    RemoveMemberOp,
    RemoveUnitOp,
    SyncReport,
    Unit,
    UnitOp,
)
from imserver.directory.pinyin import name_keys
from imserver.store.directory_changes import MEMBER, UNIT
from imserver.store.directory_sync import (
    PATH_END,
    UNIT_COLUMNS,
    check_child_levels,
    check_member_units,
    count_disabled_user,
    plan_member,
    top_paths,
    unit_path,
    unit_retitled,
)
from imserver.store.records import MemberProfile, SyncBatch, UnitMemberRow
from imserver.store.rows import qualified, unit_member_from_row
from imserver.store.sqlite.address_book import SqliteAddressBookMixin
from imserver.store.sqlite.directory_changes import SqliteChangeRecorder
from imserver.store.sqlite.directory_keys import index_name, recount_unit_members
from imserver.store.sqlite.in_list import select_in


def _unit(row: tuple[Any, ...]) -> Unit:
    return Unit(*row)


def _remove_units(
    conn: sqlite3.Connection, paths: list[str], rep: SyncReport, changes: SqliteChangeRecorder
) -> None:
    for path in paths:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM units WHERE path >= ? AND path < ?", (path, path + PATH_END)
            )
        ]
        changes.note(UNIT, ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            # Their members lose a unit: their address-book entries change.
            changes.note(
                MEMBER,
                [
                    r[0]
                    for r in conn.execute(
                        f"SELECT DISTINCT user FROM unit_members WHERE unit IN ({marks})", chunk
                    )
                ],
            )
            rep.memberships_removed += conn.execute(
                f"DELETE FROM unit_members WHERE unit IN ({marks})", chunk
            ).rowcount
            conn.execute(f"DELETE FROM admin_grants WHERE unit IN ({marks})", chunk)
            rep.units_removed += conn.execute(
                f"DELETE FROM units WHERE id IN ({marks})", chunk
            ).rowcount


def _disable_user(
    conn: sqlite3.Connection, user: str, rep: SyncReport, changes: SqliteChangeRecorder
) -> None:
    cur = conn.execute("UPDATE users SET disabled = 1 WHERE id = ? AND disabled = 0", (user,))
    left = conn.execute("DELETE FROM unit_members WHERE user = ?", (user,)).rowcount
    conn.execute("DELETE FROM admin_grants WHERE user = ?", (user,))
    count_disabled_user(user, cur.rowcount > 0, left, rep, changes)


class SqliteDirectoryMixin(SqliteAddressBookMixin):
    # -- sync ----------------------------------------------------------------
    async def begin_directory_sync(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (gen,) = conn.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'directory_sync'"
                " RETURNING value"
            ).fetchone()
            return int(gen)

        return await self._write(job)

    async def apply_directory_batch(
        self, ops: SyncBatch, gen: int, now: int, full: bool = False
    ) -> SyncReport:
        def job(conn: sqlite3.Connection) -> SyncReport:
            rep = SyncReport()
            changes = SqliteChangeRecorder()
            for line, op, profile, digest in ops:
                rep.lines += 1
                if isinstance(op, UnitOp):
                    self._apply_unit(conn, line, op, gen, now, rep, changes)
                elif isinstance(op, MemberOp):
                    self._apply_member(
                        conn, line, op, profile or {}, digest, gen, now, rep, full, changes
                    )
                elif isinstance(op, RemoveUnitOp):
                    row = conn.execute("SELECT path FROM units WHERE id = ?", (op.id,)).fetchone()
                    if row is not None:
                        _remove_units(conn, [row[0]], rep, changes)
                elif isinstance(op, RemoveMemberOp):
                    _disable_user(conn, op.user, rep, changes)
            changes.flush(conn)
            return rep

        return await self._write(job)

    @staticmethod
    def _apply_unit(
        conn: sqlite3.Connection,
        line: int,
        op: UnitOp,
        gen: int,
        now: int,
        rep: SyncReport,
        changes: SqliteChangeRecorder,
    ) -> None:
        row = conn.execute(f"SELECT {UNIT_COLUMNS} FROM units WHERE id = ?", (op.id,)).fetchone()
        old = _unit(row) if row is not None else None
        parent = None
        if op.parent is not None:
            parent = conn.execute(
                "SELECT level, path FROM units WHERE id = ?", (op.parent,)
            ).fetchone()
        path = unit_path(line, op, old, parent)
        if old is None:
            conn.execute(
                "INSERT INTO units (id, parent, name, level, path, sort, sync_gen, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (op.id, op.parent, op.name, op.level, path, op.sort, gen, now),
            )
            rep.units_created += 1
            changes.note(UNIT, [op.id])
            return
        if old.level != op.level:
            check_child_levels(
                line, op, conn.execute("SELECT id, level FROM units WHERE parent = ?", (op.id,))
            )
        if old.path != path:
            # Rewrite the whole moved subtree's paths: a prefix swap.
            conn.execute(
                "UPDATE units SET path = ? || substr(path, ?) WHERE path >= ? AND path < ?",
                (path, len(old.path) + 1, old.path, old.path + PATH_END),
            )
            rep.units_moved += 1
            # Every unit below has a new path: local copies must hear of each.
            changes.note(
                UNIT,
                [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM units WHERE path >= ? AND path < ?", (path, path + PATH_END)
                    )
                ],
            )
        elif unit_retitled(old, op):
            rep.units_updated += 1
            changes.note(UNIT, [op.id])
        conn.execute(
            "UPDATE units SET parent = ?, name = ?, level = ?, sort = ?, sync_gen = ?,"
            " updated_at = ? WHERE id = ?",
            (op.parent, op.name, op.level, op.sort, gen, now, op.id),
        )

    @staticmethod
    def _apply_member(
        conn: sqlite3.Connection,
        line: int,
        op: MemberOp,
        profile: dict[str, str],
        digest: str,
        gen: int,
        now: int,
        rep: SyncReport,
        full: bool,
        changes: SqliteChangeRecorder,
    ) -> None:
        unit_gens = dict(
            select_in(
                conn,
                "SELECT id, sync_gen FROM units WHERE id IN ({marks})",
                [m.unit for m in op.units],
            )
        )
        check_member_units(line, op, unit_gens, gen, full)
        person = conn.execute(
            "SELECT name, profile_digest, disabled, py_full FROM users WHERE id = ?", (op.user,)
        ).fetchone()
        have = {
            r[0]: (r[1], bool(r[2]))
            for r in conn.execute(
                "SELECT unit, title, leader FROM unit_members WHERE user = ?", (op.user,)
            )
        }
        plan = plan_member(op, digest, person, have, rep)
        if plan.create:
            keys = name_keys(op.name)
            index_name(conn, op.user, op.name, fresh=True)
            conn.execute(
                "INSERT INTO users (id, name, created_at, disabled, profile, profile_digest,"
                " sync_gen, py_initials, py_full) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)",
                (
                    op.user,
                    op.name,
                    now,
                    orjson.dumps(profile),
                    digest,
                    gen,
                    keys.initials,
                    keys.full,
                ),
            )
        else:
            if plan.rewrite:
                conn.execute(
                    "UPDATE users SET name = ?, profile = ?, profile_digest = ?, disabled = 0"
                    " WHERE id = ?",
                    (op.name, orjson.dumps(profile), digest, op.user),
                )
            if plan.rekey:
                keys = name_keys(op.name)
                conn.execute(
                    "UPDATE users SET py_initials = ?, py_full = ? WHERE id = ?",
                    (keys.initials, keys.full, op.user),
                )
                index_name(conn, op.user, op.name, fresh=False)
            conn.execute("UPDATE users SET sync_gen = ? WHERE id = ?", (gen, op.user))
        for unit in plan.left:
            conn.execute("DELETE FROM unit_members WHERE unit = ? AND user = ?", (unit, op.user))
        conn.executemany(
            "INSERT INTO unit_members (unit, user, title, leader, sync_gen)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (unit, user) DO UPDATE SET"
            " title = excluded.title, leader = excluded.leader, sync_gen = excluded.sync_gen",
            [(unit, op.user, title, int(leader), gen) for unit, title, leader in plan.placed],
        )
        if plan.changed:
            changes.note(MEMBER, [op.user])

    async def sweep_directory(self, gen: int) -> SyncReport:
        def job(conn: sqlite3.Connection) -> SyncReport:
            rep = SyncReport()
            changes = SqliteChangeRecorder()
            stale = conn.execute("SELECT path FROM units WHERE sync_gen != ?", (gen,))
            _remove_units(conn, top_paths(r[0] for r in stale), rep, changes)
            changes.note(
                MEMBER,
                [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT user FROM unit_members WHERE sync_gen != ?", (gen,)
                    )
                ],
            )
            rep.memberships_removed += conn.execute(
                "DELETE FROM unit_members WHERE sync_gen != ?", (gen,)
            ).rowcount
            # Only members an earlier sync brought in are removed: users made by
            # other means (bots, the CLI) were never the directory's to remove.
            for (user,) in conn.execute(
                "SELECT id FROM users WHERE sync_gen != 0 AND sync_gen != ? AND disabled = 0",
                (gen,),
            ).fetchall():
                _disable_user(conn, user, rep, changes)
            changes.flush(conn)
            return rep

        return await self._write(job)

    async def count_unit_members(self) -> None:
        await self._write(recount_unit_members)

    # -- queries -------------------------------------------------------------
    async def get_unit(self, unit_id: str) -> Unit | None:
        def job(conn: sqlite3.Connection) -> Unit | None:
            row = conn.execute(
                f"SELECT {UNIT_COLUMNS} FROM units WHERE id = ?", (unit_id,)
            ).fetchone()
            return None if row is None else _unit(row)

        return await self._read(job)

    async def units_by_ids(self, ids: Iterable[str]) -> dict[str, Unit]:
        ids = list(ids)  # read here, not in the store's thread

        def job(conn: sqlite3.Connection) -> dict[str, Unit]:
            sql = f"SELECT {UNIT_COLUMNS} FROM units WHERE id IN ({{marks}})"
            return {row[0]: _unit(row) for row in select_in(conn, sql, ids)}

        return await self._read(job)

    async def subtree(self, path: str, max_depth: int, limit: int) -> list[Unit]:
        base_depth = path.count("/") - 1

        def job(conn: sqlite3.Connection) -> list[Unit]:
            rows = conn.execute(
                f"SELECT {UNIT_COLUMNS} FROM units WHERE path >= ? AND path < ?"
                " AND (length(path) - length(replace(path, '/', ''))) - 1 <= ?"
                " ORDER BY path LIMIT ?",
                (path, path + PATH_END, base_depth + max_depth, limit),
            )
            return [_unit(r) for r in rows]

        return await self._read(job)

    async def unit_members(
        self, path: str, recursive: bool, after: tuple[str, str], limit: int
    ) -> list[UnitMemberRow]:
        def job(conn: sqlite3.Connection) -> list[UnitMemberRow]:
            where = "u.path >= ? AND u.path < ?" if recursive else "u.path = ?"
            args: tuple[Any, ...] = (path, path + PATH_END) if recursive else (path,)
            rows = conn.execute(
                "SELECT m.user, us.name, m.unit, m.title, m.leader, u.path FROM unit_members m"
                " JOIN units u ON u.id = m.unit JOIN users us ON us.id = m.user"
                f" WHERE {where} AND us.disabled = 0 AND (m.user, u.path) > (?, ?)"
                " ORDER BY m.user, u.path LIMIT ?",
                (*args, *after, limit),
            )
            return [unit_member_from_row(r) for r in rows]

        return await self._read(job)

    async def unit_recipients(self, targets: Iterable[tuple[str, bool]]) -> set[str]:
        wanted = list(targets)

        def job(conn: sqlite3.Connection) -> set[str]:
            users: set[str] = set()
            for path, recursive in wanted:
                where = "u.path >= ? AND u.path < ?" if recursive else "u.path = ?"
                args: tuple[Any, ...] = (path, path + PATH_END) if recursive else (path,)
                users.update(
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT m.user FROM unit_members m JOIN units u ON u.id = m.unit"
                        f" JOIN users us ON us.id = m.user WHERE {where} AND us.disabled = 0",
                        args,
                    )
                )
            return users

        return await self._read(job)

    async def user_memberships(self, user: str) -> list[tuple[Unit, str, bool]]:
        def job(conn: sqlite3.Connection) -> list[tuple[Unit, str, bool]]:
            rows = conn.execute(
                f"SELECT {qualified(UNIT_COLUMNS, 'u')},"
                " m.title, m.leader FROM unit_members m JOIN units u ON u.id = m.unit"
                " WHERE m.user = ? ORDER BY u.path",
                (user,),
            )
            return [(_unit(r[:6]), r[6], bool(r[7])) for r in rows]

        return await self._read(job)

    async def unit_leaders(self, unit_ids: Iterable[str]) -> dict[str, list[str]]:
        wanted = list(dict.fromkeys(unit_ids))

        def job(conn: sqlite3.Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {u: [] for u in wanted}
            for unit in wanted:
                out[unit] = [
                    r[0]
                    for r in conn.execute(
                        "SELECT m.user FROM unit_members m JOIN users us ON us.id = m.user"
                        " WHERE m.unit = ? AND m.leader = 1 AND us.disabled = 0 ORDER BY m.user",
                        (unit,),
                    )
                ]
            return out

        return await self._read(job)

    async def member_profile(self, user: str) -> MemberProfile | None:
        def job(conn: sqlite3.Connection) -> MemberProfile | None:
            row = conn.execute(
                "SELECT id, name, profile, profile_digest FROM users WHERE id = ? AND disabled = 0",
                (user,),
            ).fetchone()
            if row is None:
                return None
            return MemberProfile(row[0], row[1], orjson.loads(row[2]), row[3])

        return await self._read(job)

    # -- admin grants ----------------------------------------------------------
    async def grant_admin(self, user: str, unit: str, now: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO admin_grants (user, unit, granted_at) VALUES (?, ?, ?)",
                (user, unit, now),
            )

        await self._write(job)

    async def revoke_admin(self, user: str, unit: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM admin_grants WHERE user = ? AND unit = ?", (user, unit))
            return cur.rowcount > 0

        return await self._write(job)

    async def admin_scopes(self, user: str) -> list[Unit]:
        def job(conn: sqlite3.Connection) -> list[Unit]:
            rows = conn.execute(
                f"SELECT {qualified(UNIT_COLUMNS, 'u')}"
                " FROM admin_grants g JOIN units u ON u.id = g.unit WHERE g.user = ?"
                " ORDER BY u.path",
                (user,),
            )
            return [_unit(r) for r in rows]

        return await self._read(job)

    # -- user scopes (e.g. pii:read) -------------------------------------------
    async def set_scope(self, user: str, scope: str, granted: bool, now: int) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            if granted:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO user_scopes (user, scope, granted_at) VALUES (?, ?, ?)",
                    (user, scope, now),
                )
            else:
                cur = conn.execute(
                    "DELETE FROM user_scopes WHERE user = ? AND scope = ?", (user, scope)
                )
            return cur.rowcount > 0

        return await self._write(job)

    async def users_with_scope(self, users: Iterable[str], scope: str) -> set[str]:
        users = list(users)  # read here, not in the store's thread

        def job(conn: sqlite3.Connection) -> set[str]:
            sql = "SELECT user FROM user_scopes WHERE scope = ? AND user IN ({marks})"
            return {r[0] for r in select_in(conn, sql, users, (scope,))}

        return await self._read(job)
