"""SQLite side of the address book (通讯录): the queries ordinary users make.

A mixin of :class:`imserver.store.sqlite.SqliteStore` (through the directory
mixin). Every query is an index range with a ``LIMIT`` and a keyset cursor,
and a page of people is loaded with two ``IN`` queries (people, then all
their memberships), never one query per person. The search tiers are those
of :mod:`imserver.directory.search_rank`; each is one range scan on
``users_by_name``, ``users_by_initials`` or ``users_by_pinyin``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from imserver.directory.model import Unit
from imserver.directory.search_rank import Tier
from imserver.store.sqlite.in_list import select_in

Job = Callable[[sqlite3.Connection], Any]
END = "\x7f"  # above every character a unit path may hold
NAME_END = "\U0010ffff"  # above every character a name may hold
KEY_END = "{"  # above every character of a pinyin key ([0-9a-z])
#: A recursive listing whose subtree holds at least this many memberships walks
#: users in id order instead of sorting the subtree's members (see unit_people).
DENSE_SUBTREE = 5000


@dataclass(slots=True, frozen=True)
class PersonRow:
    """An active person as stored; ``profile`` may be sealed, ``placements``
    are ``(unit id, unit name, title, leader)`` in path order."""

    user: str
    name: str
    profile: dict[str, str]
    placements: tuple[tuple[str, str, str, bool], ...]


@dataclass(slots=True, frozen=True)
class SearchHit:
    tier: Tier
    key: str
    user: str


@dataclass(slots=True, frozen=True)
class ChangeRow:
    kind: str
    id: str
    seq: int


def _tier_sql(tier: Tier, has_key: bool) -> tuple[str, str, str] | None:
    """(rows, condition, ordering column) of ``tier``; None if it cannot match this query.

    Conditions take the named parameters ``:q``, ``:q_end``, ``:k``, ``:k_end``
    and (for "contains") ``:ch``, the query's rarest character: its rows in
    ``user_name_chars`` are the candidates, so no tier scans every user.
    Each tier leaves out what an earlier tier already returned.
    """
    users = "users u"
    name_prefix = "(u.name >= :q AND u.name < :q_end)"
    initials_prefix = "(u.py_initials >= :k AND u.py_initials < :k_end)"
    pinyin_prefix = "(u.py_full >= :k AND u.py_full < :k_end)"
    if tier is Tier.NAME_EXACT:
        return users, "u.name = :q", "u.name"
    if tier is Tier.NAME_PREFIX:
        return users, "u.name > :q AND u.name < :q_end", "u.name"
    if tier is Tier.NAME_CONTAINS:
        earlier = f" AND NOT {initials_prefix} AND NOT {pinyin_prefix}" if has_key else ""
        return (
            "user_name_chars c JOIN users u ON u.id = c.user",
            f"c.ch = :ch AND instr(u.name, :q) > 1{earlier}",
            "u.py_full",
        )
    if not has_key:
        return None
    if tier is Tier.INITIALS_EXACT:
        return users, f"u.py_initials = :k AND NOT {name_prefix}", "u.py_initials"
    if tier is Tier.INITIALS_PREFIX:
        cond = f"u.py_initials > :k AND u.py_initials < :k_end AND NOT {name_prefix}"
        return users, cond, "u.py_initials"
    return users, f"{pinyin_prefix} AND NOT {name_prefix} AND NOT {initials_prefix}", "u.py_full"


def _rarest_char(conn: sqlite3.Connection, query: str) -> str | None:
    """The query's character fewest names hold; None if some character is in no name."""
    chars = sorted(set(query))
    counts = dict(
        conn.execute(
            "SELECT ch, COUNT(*) FROM user_name_chars"
            f" WHERE ch IN ({','.join('?' * len(chars))}) GROUP BY ch",
            chars,
        ).fetchall()
    )
    if len(counts) < len(chars):
        return None
    return min(chars, key=lambda ch: (counts[ch], ch))


class SqliteAddressBookMixin:
    _read: Callable[[Job], Awaitable[Any]]

    async def people(self, users: Iterable[str]) -> dict[str, PersonRow]:
        """The active ones among ``users``, with their units (two queries)."""
        wanted = list(users)  # read here, not in the store's thread

        def job(conn: sqlite3.Connection) -> dict[str, PersonRow]:
            return _people(conn, wanted)

        result: dict[str, PersonRow] = await self._read(job)
        return result

    async def child_units(self, unit_id: str) -> list[tuple[Unit, int]]:
        """Direct sub-units in display order, each with its number of active people
        below (kept by the sync in ``units.members``)."""

        def job(conn: sqlite3.Connection) -> list[tuple[Unit, int]]:
            rows = conn.execute(
                "SELECT id, parent, name, level, path, sort, members FROM units"
                " WHERE parent = ? ORDER BY sort, id",
                (unit_id,),
            )
            return [(Unit(*r[:6]), int(r[6])) for r in rows]

        result: list[tuple[Unit, int]] = await self._read(job)
        return result

    async def unit_people(self, path: str, recursive: bool, after: str, limit: int) -> list[str]:
        """Active people in the unit (and below), by user id, after ``after``."""

        def job(conn: sqlite3.Connection) -> list[str]:
            if not recursive:
                rows = conn.execute(
                    "SELECT m.user FROM units un JOIN unit_members m ON m.unit = un.id"
                    " JOIN users us ON us.id = m.user WHERE un.path = ? AND us.disabled = 0"
                    " AND m.user > ? ORDER BY m.user LIMIT ?",
                    (path, after, limit),
                )
                return [r[0] for r in rows]
            (memberships,) = conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM units un JOIN unit_members m"
                " ON m.unit = un.id WHERE un.path >= ? AND un.path < ? LIMIT ?)",
                (path, path + END, DENSE_SUBTREE),
            ).fetchone()
            if memberships < DENSE_SUBTREE:
                # A small subtree: sorting its members is cheap.
                sql = (
                    "SELECT DISTINCT m.user FROM units un JOIN unit_members m ON m.unit = un.id"
                    " JOIN users us ON us.id = m.user WHERE un.path >= ? AND un.path < ?"
                    " AND us.disabled = 0 AND m.user > ? ORDER BY m.user LIMIT ?"
                )
            else:
                # A big one: walk users in id order; most are inside, so LIMIT stops early.
                sql = (
                    "SELECT us.id FROM users us WHERE EXISTS (SELECT 1 FROM unit_members m"
                    " JOIN units un ON un.id = m.unit WHERE m.user = us.id AND un.path >= ?"
                    " AND un.path < ?) AND us.disabled = 0 AND us.id > ? ORDER BY us.id LIMIT ?"
                )
            return [r[0] for r in conn.execute(sql, (path, path + END, after, limit))]

        result: list[str] = await self._read(job)
        return result

    async def search_people(
        self,
        query: str,
        key: str | None,
        within: str | None,
        after: tuple[Tier, str, str] | None,
        limit: int,
    ) -> list[SearchHit]:
        """Up to ``limit`` matches in rank order, after the ``(tier, key, user)`` cursor.

        ``within`` is a unit path: only people with a unit in that subtree.
        """
        params = {
            "q": query,
            "q_end": query + NAME_END,
            "k": key or "",
            "k_end": (key or "") + KEY_END,
            "p": within or "",
            "p_end": (within or "") + END,
        }
        scope = (
            " AND EXISTS (SELECT 1 FROM unit_members m JOIN units un ON un.id = m.unit"
            " WHERE m.user = u.id AND un.path >= :p AND un.path < :p_end)"
            if within is not None
            else " AND EXISTS (SELECT 1 FROM unit_members m WHERE m.user = u.id)"
        )

        def job(conn: sqlite3.Connection) -> list[SearchHit]:
            hits: list[SearchHit] = []
            for tier in Tier:
                if after is not None and tier < after[0]:
                    continue
                found = _tier_sql(tier, key is not None)
                if found is None:
                    continue
                rows_from, cond, col = found
                resume = ""
                args = dict(params, left=limit - len(hits))
                if tier is Tier.NAME_CONTAINS:
                    rarest = _rarest_char(conn, query)
                    if rarest is None:
                        break
                    args["ch"] = rarest
                if after is not None and tier == after[0]:
                    resume = f" AND ({col}, u.id) > (:after_key, :after_user)"
                    args.update(after_key=after[1], after_user=after[2])
                rows = conn.execute(
                    f"SELECT {col}, u.id FROM {rows_from} WHERE {cond} AND u.disabled = 0"
                    f"{scope}{resume} ORDER BY {col}, u.id LIMIT :left",
                    args,
                )
                hits.extend(SearchHit(tier, r[0], r[1]) for r in rows)
                if len(hits) >= limit:
                    break
            return hits

        result: list[SearchHit] = await self._read(job)
        return result

    async def directory_changes(self, since: int, limit: int) -> tuple[list[ChangeRow], int]:
        """Up to ``limit`` changes after ``since`` in order, and the newest change number."""

        def job(conn: sqlite3.Connection) -> tuple[list[ChangeRow], int]:
            rows = conn.execute(
                "SELECT kind, id, seq FROM directory_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (since, limit),
            )
            changes = [ChangeRow(*r) for r in rows]
            (newest,) = conn.execute(
                "SELECT value FROM counters WHERE name = 'directory_change'"
            ).fetchone()
            return changes, int(newest)

        result: tuple[list[ChangeRow], int] = await self._read(job)
        return result

    async def directory_cursor(self) -> int:
        """The number of the newest directory change (0: none yet)."""
        _, newest = await self.directory_changes(2**62, 1)
        return newest


def _people(conn: sqlite3.Connection, users: list[str]) -> dict[str, PersonRow]:
    found = {
        r[0]: (r[1], orjson.loads(r[2]))
        for r in select_in(
            conn,
            "SELECT id, name, profile FROM users WHERE disabled = 0 AND id IN ({marks})",
            users,
        )
    }
    placements: dict[str, list[tuple[str, str, str, bool, str]]] = {u: [] for u in found}
    for user, unit, unit_name, title, leader, path in select_in(
        conn,
        "SELECT m.user, m.unit, un.name, m.title, m.leader, un.path FROM unit_members m"
        " JOIN units un ON un.id = m.unit WHERE m.user IN ({marks})",
        found,
    ):
        placements[user].append((unit, unit_name, title, bool(leader), path))
    return {
        user: PersonRow(
            user,
            name,
            profile,
            tuple(p[:4] for p in sorted(placements[user], key=lambda p: p[4])),
        )
        for user, (name, profile) in found.items()
    }
