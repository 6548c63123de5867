"""PostgreSQL side of the organisation directory: sync, queries, admin grants, user scopes.

The same rules as ``store/sqlite/directory.py``: a sync is applied in
batches, one write job each; every row a sync touches gets the sync's
generation number, so a full sync ends with a sweep of what it did not
touch; subtrees are path ranges (``path >= '/jx/nc/' AND path < '/jx/nc/\\x7f'``,
bytewise — the columns use the "C" collation). With several nodes, a sync's
batches run on one node (the one the admin called) while the others read;
each batch is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from imserver.directory.model import (
    MemberOp,
    RemoveMemberOp,
    RemoveUnitOp,
    SyncReport,
    Unit,
    UnitOp,
)
from imserver.store.directory_changes import MEMBER, UNIT
from imserver.store.directory_sync import (
    PATH_END,
    UNIT_COLUMNS,
    check_child_levels,
    count_disabled_user,
    top_paths,
    unit_path,
    unit_retitled,
)
from imserver.store.postgres.address_book import PgAddressBookMixin
from imserver.store.postgres.directory_changes import PgChangeRecorder
from imserver.store.postgres.directory_members import MemberRun
from imserver.store.postgres.jobs import PgConn
from imserver.store.records import MemberProfile, SyncBatch, UnitMemberRow
from imserver.store.rows import load_json, qualified, unit_member_from_row


def _count(status: str) -> int:
    """Rows affected, from a command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def _remove_units(
    conn: PgConn, paths: list[str], rep: SyncReport, changes: PgChangeRecorder
) -> None:
    for path in paths:
        ids = [
            r[0]
            for r in await conn.fetch(
                "SELECT id FROM units WHERE path >= $1 AND path < $2", path, path + PATH_END
            )
        ]
        changes.note(UNIT, ids)
        # Their members lose a unit: their address-book entries change.
        affected = await conn.fetch(
            'SELECT DISTINCT "user" FROM unit_members WHERE unit = ANY($1::text[])', ids
        )
        changes.note(MEMBER, [r[0] for r in affected])
        rep.memberships_removed += _count(
            await conn.execute("DELETE FROM unit_members WHERE unit = ANY($1::text[])", ids)
        )
        await conn.execute("DELETE FROM admin_grants WHERE unit = ANY($1::text[])", ids)
        rep.units_removed += _count(
            await conn.execute("DELETE FROM units WHERE id = ANY($1::text[])", ids)
        )


async def _disable_user(
    conn: PgConn, user: str, rep: SyncReport, changes: PgChangeRecorder
) -> None:
    disabled = _count(
        await conn.execute("UPDATE users SET disabled = TRUE WHERE id = $1 AND NOT disabled", user)
    )
    left = _count(await conn.execute('DELETE FROM unit_members WHERE "user" = $1', user))
    await conn.execute('DELETE FROM admin_grants WHERE "user" = $1', user)
    count_disabled_user(user, disabled > 0, left, rep, changes)


async def _count_unit_members(conn: PgConn) -> None:
    """Store each unit's number of active people anywhere below it (``units.members``).

    One statement: every membership's path is split into the units above it,
    and each person is counted once per unit.
    """
    await conn.execute(
        "WITH counted AS ("
        ' SELECT ancestor AS unit, count(DISTINCT m."user") AS n FROM unit_members m'
        ' JOIN units un ON un.id = m.unit JOIN users us ON us.id = m."user"'
        " CROSS JOIN LATERAL unnest(string_to_array(trim(both '/' from un.path), '/')) ancestor"
        " WHERE NOT us.disabled GROUP BY ancestor)"
        " UPDATE units u SET members = coalesce(c.n, 0) FROM units u2"
        " LEFT JOIN counted c ON c.unit = u2.id"
        " WHERE u.id = u2.id AND u.members IS DISTINCT FROM coalesce(c.n, 0)"
    )


class PgDirectoryMixin(PgAddressBookMixin):
    # -- sync ----------------------------------------------------------------
    async def begin_directory_sync(self) -> int:
        async def job(conn: PgConn) -> int:
            gen = await conn.fetchval(
                "UPDATE counters SET value = value + 1 WHERE name = 'directory_sync'"
                " RETURNING value"
            )
            return int(gen)

        return await self._write(job)

    async def apply_directory_batch(
        self, ops: SyncBatch, gen: int, now: int, full: bool = False
    ) -> SyncReport:
        """Member lines are written a run at a time (:class:`MemberRun`); any other line
        first writes the run before it, so the batch still applies in line order."""

        async def job(conn: PgConn) -> SyncReport:
            rep = SyncReport()
            changes = PgChangeRecorder()
            members = MemberRun(gen, now, full)
            for line, op, profile, digest in ops:
                rep.lines += 1
                if isinstance(op, MemberOp):
                    if not members.add(line, op, profile or {}, digest):
                        await members.apply(conn, rep, changes)  # the user is in the run
                        members.add(line, op, profile or {}, digest)
                    continue
                await members.apply(conn, rep, changes)  # members first, in line order
                if isinstance(op, UnitOp):
                    await _apply_unit(conn, line, op, gen, now, rep, changes)
                elif isinstance(op, RemoveUnitOp):
                    path = await conn.fetchval("SELECT path FROM units WHERE id = $1", op.id)
                    if path is not None:
                        await _remove_units(conn, [path], rep, changes)
                elif isinstance(op, RemoveMemberOp):
                    await _disable_user(conn, op.user, rep, changes)
            await members.apply(conn, rep, changes)
            await changes.store(conn)
            return rep

        return await self._write(job)

    async def sweep_directory(self, gen: int) -> SyncReport:
        async def job(conn: PgConn) -> SyncReport:
            rep = SyncReport()
            changes = PgChangeRecorder()
            stale = await conn.fetch("SELECT path FROM units WHERE sync_gen != $1", gen)
            await _remove_units(conn, top_paths(r[0] for r in stale), rep, changes)
            dropped = await conn.fetch(
                'SELECT DISTINCT "user" FROM unit_members WHERE sync_gen != $1', gen
            )
            changes.note(MEMBER, [r[0] for r in dropped])
            rep.memberships_removed += _count(
                await conn.execute("DELETE FROM unit_members WHERE sync_gen != $1", gen)
            )
            # Only members an earlier sync brought in are removed: users made by
            # other means (bots, the CLI) were never the directory's to remove.
            for r in await conn.fetch(
                "SELECT id FROM users WHERE sync_gen != 0 AND sync_gen != $1 AND NOT disabled",
                gen,
            ):
                await _disable_user(conn, r[0], rep, changes)
            await changes.store(conn)
            return rep

        return await self._write(job)

    async def count_unit_members(self) -> None:
        await self._write(_count_unit_members)

    # -- queries -------------------------------------------------------------
    async def get_unit(self, unit_id: str) -> Unit | None:
        async def job(conn: PgConn) -> Unit | None:
            row = await conn.fetchrow(f"SELECT {UNIT_COLUMNS} FROM units WHERE id = $1", unit_id)
            return None if row is None else Unit(*row)

        return await self._read(job)

    async def units_by_ids(self, ids: Iterable[str]) -> dict[str, Unit]:
        wanted = list(dict.fromkeys(ids))

        async def job(conn: PgConn) -> dict[str, Unit]:
            rows = await conn.fetch(
                f"SELECT {UNIT_COLUMNS} FROM units WHERE id = ANY($1::text[])", wanted
            )
            return {row[0]: Unit(*row) for row in rows}

        return await self._read(job)

    async def subtree(self, path: str, max_depth: int, limit: int) -> list[Unit]:
        base_depth = path.count("/") - 1

        async def job(conn: PgConn) -> list[Unit]:
            rows = await conn.fetch(
                f"SELECT {UNIT_COLUMNS} FROM units WHERE path >= $1 AND path < $2"
                " AND (length(path) - length(replace(path, '/', ''))) - 1 <= $3"
                " ORDER BY path LIMIT $4",
                path,
                path + PATH_END,
                base_depth + max_depth,
                limit,
            )
            return [Unit(*r) for r in rows]

        return await self._read(job)

    async def unit_members(
        self, path: str, recursive: bool, after: tuple[str, str], limit: int
    ) -> list[UnitMemberRow]:
        if recursive:
            where, args = "u.path >= $1 AND u.path < $2", [path, path + PATH_END]
        else:
            where, args = "u.path = $1", [path]
        n = len(args)

        async def job(conn: PgConn) -> list[UnitMemberRow]:
            rows = await conn.fetch(
                'SELECT m."user", us.name, m.unit, m.title, m.leader, u.path FROM unit_members m'
                ' JOIN units u ON u.id = m.unit JOIN users us ON us.id = m."user"'
                f' WHERE {where} AND NOT us.disabled AND (m."user", u.path) > (${n + 1}, ${n + 2})'
                f' ORDER BY m."user", u.path LIMIT ${n + 3}',
                *args,
                after[0],
                after[1],
                limit,
            )
            return [unit_member_from_row(r) for r in rows]

        return await self._read(job)

    async def unit_recipients(self, targets: Iterable[tuple[str, bool]]) -> set[str]:
        wanted = list(targets)

        async def job(conn: PgConn) -> set[str]:
            users: set[str] = set()
            for path, recursive in wanted:
                where = "u.path >= $1 AND u.path < $2" if recursive else "u.path = $1"
                args = (path, path + PATH_END) if recursive else (path,)
                rows = await conn.fetch(
                    'SELECT DISTINCT m."user" FROM unit_members m JOIN units u ON u.id = m.unit'
                    f' JOIN users us ON us.id = m."user" WHERE {where} AND NOT us.disabled',
                    *args,
                )
                users.update(r[0] for r in rows)
            return users

        return await self._read(job)

    async def user_memberships(self, user: str) -> list[tuple[Unit, str, bool]]:
        async def job(conn: PgConn) -> list[tuple[Unit, str, bool]]:
            rows = await conn.fetch(
                f"SELECT {qualified(UNIT_COLUMNS, 'u')}, m.title, m.leader"
                ' FROM unit_members m JOIN units u ON u.id = m.unit WHERE m."user" = $1'
                " ORDER BY u.path",
                user,
            )
            return [(Unit(*tuple(r)[:6]), r[6], bool(r[7])) for r in rows]

        return await self._read(job)

    async def unit_leaders(self, unit_ids: Iterable[str]) -> dict[str, list[str]]:
        wanted = list(dict.fromkeys(unit_ids))

        async def job(conn: PgConn) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {u: [] for u in wanted}
            rows = await conn.fetch(
                'SELECT m.unit, m."user" FROM unit_members m JOIN users us ON us.id = m."user"'
                " WHERE m.unit = ANY($1::text[]) AND m.leader AND NOT us.disabled"
                ' ORDER BY m."user"',
                wanted,
            )
            for unit, user in rows:
                out[unit].append(user)
            return out

        return await self._read(job)

    async def member_profile(self, user: str) -> MemberProfile | None:
        async def job(conn: PgConn) -> MemberProfile | None:
            row = await conn.fetchrow(
                "SELECT id, name, profile, profile_digest FROM users"
                " WHERE id = $1 AND NOT disabled",
                user,
            )
            if row is None:
                return None
            return MemberProfile(row[0], row[1], load_json(row[2]), row[3])

        return await self._read(job)

    # -- admin grants ----------------------------------------------------------
    async def grant_admin(self, user: str, unit: str, now: int) -> None:
        async def job(conn: PgConn) -> None:
            await conn.execute(
                'INSERT INTO admin_grants ("user", unit, granted_at) VALUES ($1, $2, $3)'
                " ON CONFLICT DO NOTHING",
                user,
                unit,
                now,
            )

        await self._write(job)

    async def revoke_admin(self, user: str, unit: str) -> bool:
        async def job(conn: PgConn) -> bool:
            status = await conn.execute(
                'DELETE FROM admin_grants WHERE "user" = $1 AND unit = $2', user, unit
            )
            return _count(status) > 0

        return await self._write(job)

    async def admin_scopes(self, user: str) -> list[Unit]:
        async def job(conn: PgConn) -> list[Unit]:
            rows = await conn.fetch(
                f"SELECT {qualified(UNIT_COLUMNS, 'u')}"
                ' FROM admin_grants g JOIN units u ON u.id = g.unit WHERE g."user" = $1'
                " ORDER BY u.path",
                user,
            )
            return [Unit(*r) for r in rows]

        return await self._read(job)

    # -- user scopes (e.g. pii:read) -------------------------------------------
    async def set_scope(self, user: str, scope: str, granted: bool, now: int) -> bool:
        async def job(conn: PgConn) -> bool:
            if granted:
                status = await conn.execute(
                    'INSERT INTO user_scopes ("user", scope, granted_at) VALUES ($1, $2, $3)'
                    " ON CONFLICT DO NOTHING",
                    user,
                    scope,
                    now,
                )
            else:
                status = await conn.execute(
                    'DELETE FROM user_scopes WHERE "user" = $1 AND scope = $2', user, scope
                )
            return _count(status) > 0

        return await self._write(job)

    async def users_with_scope(self, users: Iterable[str], scope: str) -> set[str]:
        wanted = list(dict.fromkeys(users))

        async def job(conn: PgConn) -> set[str]:
            rows = await conn.fetch(
                'SELECT "user" FROM user_scopes WHERE scope = $1 AND "user" = ANY($2::text[])',
                scope,
                wanted,
            )
            return {r[0] for r in rows}

        return await self._read(job)


async def _apply_unit(
    conn: PgConn,
    line: int,
    op: UnitOp,
    gen: int,
    now: int,
    rep: SyncReport,
    changes: PgChangeRecorder,
) -> None:
    row = await conn.fetchrow(f"SELECT {UNIT_COLUMNS} FROM units WHERE id = $1", op.id)
    old = Unit(*row) if row is not None else None
    parent = None
    if op.parent is not None:
        parent = await conn.fetchrow("SELECT level, path FROM units WHERE id = $1", op.parent)
    path = unit_path(line, op, old, None if parent is None else (parent[0], parent[1]))
    if old is None:
        await conn.execute(
            "INSERT INTO units (id, parent, name, level, path, sort, sync_gen, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            op.id,
            op.parent,
            op.name,
            op.level,
            path,
            op.sort,
            gen,
            now,
        )
        rep.units_created += 1
        changes.note(UNIT, [op.id])
        return
    if old.level != op.level:
        children = await conn.fetch("SELECT id, level FROM units WHERE parent = $1", op.id)
        check_child_levels(line, op, ((r[0], r[1]) for r in children))
    if old.path != path:
        # Rewrite the whole moved subtree's paths: a prefix swap.
        await conn.execute(
            "UPDATE units SET path = $1 || substr(path, $2) WHERE path >= $3 AND path < $4",
            path,
            len(old.path) + 1,
            old.path,
            old.path + PATH_END,
        )
        rep.units_moved += 1
        # Every unit below has a new path: local copies must hear of each.
        moved = await conn.fetch(
            "SELECT id FROM units WHERE path >= $1 AND path < $2", path, path + PATH_END
        )
        changes.note(UNIT, [r[0] for r in moved])
    elif unit_retitled(old, op):
        rep.units_updated += 1
        changes.note(UNIT, [op.id])
    await conn.execute(
        "UPDATE units SET parent = $1, name = $2, level = $3, sort = $4, sync_gen = $5,"
        " updated_at = $6 WHERE id = $7",
        op.parent,
        op.name,
        op.level,
        op.sort,
        gen,
        now,
        op.id,
    )
