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
from collections.abc import Iterable

import orjson

from imserver.directory.model import Unit
from imserver.store.directory_changes import ChangeFeedCursor
from imserver.store.directory_sync import PATH_END
from imserver.store.people_search import DENSE_SUBTREE, PeopleSearch, person_rows, rarest_char
from imserver.store.records import ChangeRow, LastHit, PersonRow, SearchHit
from imserver.store.sqlite.in_list import select_in
from imserver.store.sqlite.jobs import SqliteJobs


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
    return rarest_char(query, counts)


class SqliteAddressBookMixin(ChangeFeedCursor, SqliteJobs):
    async def people(self, users: Iterable[str]) -> dict[str, PersonRow]:
        wanted = list(users)  # read here, not in the store's thread

        def job(conn: sqlite3.Connection) -> dict[str, PersonRow]:
            return _people(conn, wanted)

        return await self._read(job)

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

        return await self._read(job)

    async def unit_people(self, path: str, recursive: bool, after: str, limit: int) -> list[str]:
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
                (path, path + PATH_END, DENSE_SUBTREE),
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
            return [r[0] for r in conn.execute(sql, (path, path + PATH_END, after, limit))]

        return await self._read(job)

    async def search_people(
        self, query: str, key: str | None, within: str | None, after: LastHit | None, limit: int
    ) -> list[SearchHit]:
        def job(conn: sqlite3.Connection) -> list[SearchHit]:
            search = PeopleSearch(query, key, within, after, limit, active="u.disabled = 0")
            for tier in search.tiers():
                rarest = _rarest_char(conn, query) if search.needs_rarest(tier) else None
                statement = search.statement(tier, rarest)
                if statement is None:
                    break
                search.add(tier, conn.execute(*statement))
            return search.hits

        return await self._read(job)

    async def directory_changes(self, since: int, limit: int) -> tuple[list[ChangeRow], int]:
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

        return await self._read(job)


def _people(conn: sqlite3.Connection, users: list[str]) -> dict[str, PersonRow]:
    found = {
        r[0]: (r[1], orjson.loads(r[2]))
        for r in select_in(
            conn,
            "SELECT id, name, profile FROM users WHERE disabled = 0 AND id IN ({marks})",
            users,
        )
    }
    placements = select_in(
        conn,
        "SELECT m.user, m.unit, un.name, m.title, m.leader, un.path FROM unit_members m"
        " JOIN units un ON un.id = m.unit WHERE m.user IN ({marks})",
        found,
    )
    return person_rows(found, placements)
