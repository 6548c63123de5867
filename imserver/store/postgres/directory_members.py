"""Applying a run of member lines of a directory sync with a few round trips, not thousands.

Why: the SQLite store runs each member line as half a dozen statements, which
costs microseconds in-process; over a network to PostgreSQL that was 150 s for
a province of 100,000 people. A run of consecutive member lines (each user at
most once) is read with three queries — the units they name, the users, their
current memberships — decided in Python by the same rules as
the SQLite store (``store/directory_sync.py`` ``plan_member``), and written with one pipelined
statement per kind of change. Lines are still checked in order, so the first
bad line is the one named; any error rolls the whole batch back, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imserver.directory.model import MemberOp, SyncReport
from imserver.directory.pinyin import name_keys
from imserver.store.directory_changes import MEMBER
from imserver.store.directory_sync import check_member_units, plan_member
from imserver.store.postgres.directory_changes import PgChangeRecorder
from imserver.store.postgres.jobs import PgConn
from imserver.store.rows import dump_json


@dataclass(slots=True)
class _Writes:
    """Every change a run decided, by statement."""

    new_users: list[tuple[Any, ...]] = field(default_factory=list)
    profiles: list[tuple[Any, ...]] = field(default_factory=list)
    search_keys: list[tuple[Any, ...]] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)  # existing users: new sync_gen
    reindexed: list[str] = field(default_factory=list)  # name characters replaced
    name_chars: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # (unit, user) removed
    placed: list[tuple[Any, ...]] = field(default_factory=list)  # unit_members upserts


@dataclass(slots=True)
class _Line:
    line: int
    op: MemberOp
    profile: dict[str, str]
    digest: str


class MemberRun:
    """Consecutive member lines of one batch; :meth:`apply` writes and empties it."""

    def __init__(self, gen: int, now: int, full: bool) -> None:
        self._gen = gen
        self._now = now
        self._full = full
        self._lines: list[_Line] = []
        self._users: set[str] = set()

    def add(self, line: int, op: MemberOp, profile: dict[str, str], digest: str) -> bool:
        """Queue the line; False (nothing queued) if its user is already in the run."""
        if op.user in self._users:
            return False
        self._users.add(op.user)
        self._lines.append(_Line(line, op, profile, digest))
        return True

    async def apply(self, conn: PgConn, rep: SyncReport, changes: PgChangeRecorder) -> None:
        if not self._lines:
            return
        lines, self._lines, self._users = self._lines, [], set()
        users = [x.op.user for x in lines]
        unit_gens = {
            r[0]: r[1]
            for r in await conn.fetch(
                "SELECT id, sync_gen FROM units WHERE id = ANY($1::text[])",
                sorted({m.unit for x in lines for m in x.op.units}),
            )
        }
        people = {
            r[0]: (r[1], r[2], r[3], r[4])
            for r in await conn.fetch(
                "SELECT id, name, profile_digest, disabled, py_full FROM users"
                " WHERE id = ANY($1::text[])",
                users,
            )
        }
        placements: dict[str, dict[str, tuple[str, bool]]] = {u: {} for u in users}
        for user, unit, title, leader in await conn.fetch(
            'SELECT "user", unit, title, leader FROM unit_members WHERE "user" = ANY($1::text[])',
            users,
        ):
            placements[user][unit] = (title, bool(leader))
        writes = _Writes()
        for x in lines:
            check_member_units(x.line, x.op, unit_gens, self._gen, self._full)
            if self._decide(x, people.get(x.op.user), placements[x.op.user], rep, writes):
                changes.note(MEMBER, [x.op.user])
        await _write(conn, writes, self._gen)

    def _decide(
        self,
        x: _Line,
        person: tuple[str, str, bool, str] | None,
        have: dict[str, tuple[str, bool]],
        rep: SyncReport,
        writes: _Writes,
    ) -> bool:
        """Add ``x``'s writes; whether the person's address-book entry changed."""
        op, gen = x.op, self._gen
        plan = plan_member(op, x.digest, person, have, rep)
        if plan.create:
            keys = name_keys(op.name)
            row = (op.user, op.name, self._now, dump_json(x.profile), x.digest, gen)
            writes.new_users.append((*row, keys.initials, keys.full))
            writes.name_chars += [(ch, op.user) for ch in set(op.name)]
        else:
            if plan.rewrite:
                writes.profiles.append((op.name, dump_json(x.profile), x.digest, op.user))
            if plan.rekey:
                keys = name_keys(op.name)
                writes.search_keys.append((keys.initials, keys.full, op.user))
                writes.reindexed.append(op.user)
                writes.name_chars += [(ch, op.user) for ch in set(op.name)]
            writes.touched.append(op.user)
        writes.left += [(unit, op.user) for unit in plan.left]
        writes.placed += [(unit, op.user, t, leader, gen) for unit, t, leader in plan.placed]
        return plan.changed


async def _write(conn: PgConn, w: _Writes, gen: int) -> None:
    """One statement per kind of change; each user appears once per run, so order is free."""
    if w.new_users:
        await conn.executemany(
            "INSERT INTO users (id, name, created_at, disabled, profile, profile_digest,"
            " sync_gen, py_initials, py_full) VALUES ($1, $2, $3, FALSE, $4, $5, $6, $7, $8)",
            w.new_users,
        )
    if w.profiles:
        await conn.executemany(
            "UPDATE users SET name = $1, profile = $2, profile_digest = $3, disabled = FALSE"
            " WHERE id = $4",
            w.profiles,
        )
    if w.search_keys:
        await conn.executemany(
            "UPDATE users SET py_initials = $1, py_full = $2 WHERE id = $3", w.search_keys
        )
    if w.touched:
        await conn.execute(
            "UPDATE users SET sync_gen = $1 WHERE id = ANY($2::text[])", gen, w.touched
        )
    if w.reindexed:
        await conn.execute(
            'DELETE FROM user_name_chars WHERE "user" = ANY($1::text[])', w.reindexed
        )
    if w.name_chars:
        await conn.executemany(
            'INSERT INTO user_name_chars (ch, "user") VALUES ($1, $2) ON CONFLICT DO NOTHING',
            w.name_chars,
        )
    if w.left:
        await conn.executemany('DELETE FROM unit_members WHERE unit = $1 AND "user" = $2', w.left)
    if w.placed:
        await conn.executemany(
            'INSERT INTO unit_members (unit, "user", title, leader, sync_gen)'
            ' VALUES ($1, $2, $3, $4, $5) ON CONFLICT (unit, "user") DO UPDATE SET'
            " title = excluded.title, leader = excluded.leader, sync_gen = excluded.sync_gen",
            w.placed,
        )
