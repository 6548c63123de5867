"""PostgreSQL side of the address book (通讯录): the queries ordinary users make.

The same queries as ``store/sqlite/address_book.py`` — index ranges with a
``LIMIT`` and keyset cursors, a page of people loaded with two queries —
and the same search tiers, whose statements are built once for both
backends (``store/people_search.py``) and numbered for PostgreSQL by
``named.positional``.
"""

from __future__ import annotations

from collections.abc import Iterable

from imserver.directory.model import Unit
from imserver.store.directory_changes import ChangeFeedCursor
from imserver.store.directory_sync import PATH_END
from imserver.store.people_search import DENSE_SUBTREE, PeopleSearch, person_rows, rarest_char
from imserver.store.postgres.jobs import PgConn, PgJobs
from imserver.store.postgres.named import positional
from imserver.store.records import ChangeRow, LastHit, PersonRow, SearchHit
from imserver.store.rows import load_json


async def _people(conn: PgConn, users: list[str]) -> dict[str, PersonRow]:
    found = {
        r[0]: (r[1], load_json(r[2]))
        for r in await conn.fetch(
            "SELECT id, name, profile FROM users WHERE NOT disabled AND id = ANY($1::text[])",
            users,
        )
    }
    placements = await conn.fetch(
        'SELECT m."user", m.unit, un.name, m.title, m.leader, un.path FROM unit_members m'
        ' JOIN units un ON un.id = m.unit WHERE m."user" = ANY($1::text[])',
        list(found),
    )
    return person_rows(found, (tuple(r) for r in placements))


async def _rarest_char(conn: PgConn, query: str) -> str | None:
    """The query's character fewest names hold; None if some character is in no name."""
    rows = await conn.fetch(
        "SELECT ch, count(*) FROM user_name_chars WHERE ch = ANY($1::text[]) GROUP BY ch",
        sorted(set(query)),
    )
    return rarest_char(query, {r[0]: r[1] for r in rows})


class PgAddressBookMixin(ChangeFeedCursor, PgJobs):
    async def people(self, users: Iterable[str]) -> dict[str, PersonRow]:
        wanted = list(dict.fromkeys(users))

        async def job(conn: PgConn) -> dict[str, PersonRow]:
            return await _people(conn, wanted)

        return await self._read(job)

    async def child_units(self, unit_id: str) -> list[tuple[Unit, int]]:
        """Direct sub-units in display order, each with its number of active people below."""

        async def job(conn: PgConn) -> list[tuple[Unit, int]]:
            rows = await conn.fetch(
                "SELECT id, parent, name, level, path, sort, members FROM units"
                " WHERE parent = $1 ORDER BY sort, id",
                unit_id,
            )
            return [(Unit(*tuple(r)[:6]), int(r[6])) for r in rows]

        return await self._read(job)

    async def unit_people(self, path: str, recursive: bool, after: str, limit: int) -> list[str]:
        async def job(conn: PgConn) -> list[str]:
            if not recursive:
                rows = await conn.fetch(
                    'SELECT m."user" FROM units un JOIN unit_members m ON m.unit = un.id'
                    ' JOIN users us ON us.id = m."user" WHERE un.path = $1 AND NOT us.disabled'
                    ' AND m."user" > $2 ORDER BY m."user" LIMIT $3',
                    path,
                    after,
                    limit,
                )
                return [r[0] for r in rows]
            memberships = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM units un JOIN unit_members m"
                " ON m.unit = un.id WHERE un.path >= $1 AND un.path < $2 LIMIT $3) AS few",
                path,
                path + PATH_END,
                DENSE_SUBTREE,
            )
            if memberships < DENSE_SUBTREE:
                # A small subtree: sorting its members is cheap.
                sql = (
                    'SELECT DISTINCT m."user" FROM units un JOIN unit_members m ON m.unit = un.id'
                    ' JOIN users us ON us.id = m."user" WHERE un.path >= $1 AND un.path < $2'
                    ' AND NOT us.disabled AND m."user" > $3 ORDER BY m."user" LIMIT $4'
                )
            else:
                # A big one: walk users in id order; most are inside, so LIMIT stops early.
                sql = (
                    "SELECT us.id FROM users us WHERE EXISTS (SELECT 1 FROM unit_members m"
                    ' JOIN units un ON un.id = m.unit WHERE m."user" = us.id AND un.path >= $1'
                    " AND un.path < $2) AND NOT us.disabled AND us.id > $3 ORDER BY us.id LIMIT $4"
                )
            return [r[0] for r in await conn.fetch(sql, path, path + PATH_END, after, limit)]

        return await self._read(job)

    async def search_people(
        self, query: str, key: str | None, within: str | None, after: LastHit | None, limit: int
    ) -> list[SearchHit]:
        async def job(conn: PgConn) -> list[SearchHit]:
            search = PeopleSearch(query, key, within, after, limit, active="NOT u.disabled")
            for tier in search.tiers():
                rarest = await _rarest_char(conn, query) if search.needs_rarest(tier) else None
                statement = search.statement(tier, rarest)
                if statement is None:
                    break
                sql, values = positional(*statement)
                search.add(tier, await conn.fetch(sql, *values))
            return search.hits

        return await self._read(job)

    async def directory_changes(self, since: int, limit: int) -> tuple[list[ChangeRow], int]:
        async def job(conn: PgConn) -> tuple[list[ChangeRow], int]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await conn.fetch(
                    "SELECT kind, id, seq FROM directory_changes WHERE seq > $1"
                    " ORDER BY seq LIMIT $2",
                    since,
                    limit,
                )
                newest = await conn.fetchval(
                    "SELECT value FROM counters WHERE name = 'directory_change'"
                )
            return [ChangeRow(*r) for r in rows], int(newest)

        return await self._read(job)
