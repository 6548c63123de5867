"""PostgreSQL side of the address book (通讯录): the queries ordinary users make.

The same queries as ``store/sqlite/address_book.py`` — index ranges with a
``LIMIT`` and keyset cursors, a page of people loaded with two queries —
and the same search tiers, whose conditions are built once for both
backends (``_tier_sql``) and numbered for PostgreSQL by ``named.positional``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from imserver.directory.model import Unit
from imserver.directory.search_rank import Tier
from imserver.store.postgres.jobs import PgConn, PgJob
from imserver.store.postgres.named import positional
from imserver.store.rows import load_json
from imserver.store.sqlite.address_book import (
    DENSE_SUBTREE,
    KEY_END,
    NAME_END,
    ChangeRow,
    PersonRow,
    SearchHit,
    _tier_sql,
)

END: Final = "\x7f"  # above every character a unit path may hold


async def _people(conn: PgConn, users: list[str]) -> dict[str, PersonRow]:
    found = {
        r[0]: (r[1], load_json(r[2]))
        for r in await conn.fetch(
            "SELECT id, name, profile FROM users WHERE NOT disabled AND id = ANY($1::text[])",
            users,
        )
    }
    placements: dict[str, list[tuple[str, str, str, bool]]] = {u: [] for u in found}
    for user, unit, unit_name, title, leader in await conn.fetch(
        'SELECT m."user", m.unit, un.name, m.title, m.leader FROM unit_members m'
        ' JOIN units un ON un.id = m.unit WHERE m."user" = ANY($1::text[]) ORDER BY un.path',
        list(found),
    ):
        placements[user].append((unit, unit_name, title, bool(leader)))
    return {
        user: PersonRow(user, name, profile, tuple(placements[user]))
        for user, (name, profile) in found.items()
    }


async def _rarest_char(conn: PgConn, query: str) -> str | None:
    """The query's character fewest names hold; None if some character is in no name."""
    chars = sorted(set(query))
    counts = {
        r[0]: r[1]
        for r in await conn.fetch(
            "SELECT ch, count(*) FROM user_name_chars WHERE ch = ANY($1::text[]) GROUP BY ch",
            chars,
        )
    }
    if len(counts) < len(chars):
        return None
    return min(chars, key=lambda ch: (counts[ch], ch))


class PgAddressBookMixin:
    _read: Callable[[PgJob], Awaitable[Any]]

    async def people(self, users: Iterable[str]) -> dict[str, PersonRow]:
        """The active ones among ``users``, with their units (two queries)."""
        wanted = list(dict.fromkeys(users))

        async def job(conn: PgConn) -> dict[str, PersonRow]:
            return await _people(conn, wanted)

        result: dict[str, PersonRow] = await self._read(job)
        return result

    async def child_units(self, unit_id: str) -> list[tuple[Unit, int]]:
        """Direct sub-units in display order, each with its number of active people below."""

        async def job(conn: PgConn) -> list[tuple[Unit, int]]:
            rows = await conn.fetch(
                "SELECT id, parent, name, level, path, sort, members FROM units"
                " WHERE parent = $1 ORDER BY sort, id",
                unit_id,
            )
            return [(Unit(*tuple(r)[:6]), int(r[6])) for r in rows]

        result: list[tuple[Unit, int]] = await self._read(job)
        return result

    async def unit_people(self, path: str, recursive: bool, after: str, limit: int) -> list[str]:
        """Active people in the unit (and below), by user id, after ``after``."""

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
                path + END,
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
            return [r[0] for r in await conn.fetch(sql, path, path + END, after, limit)]

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
        params: dict[str, Any] = {
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

        async def job(conn: PgConn) -> list[SearchHit]:
            hits: list[SearchHit] = []
            for tier in Tier:
                if after is not None and tier < after[0]:
                    continue
                tier_sql = _tier_sql(tier, key is not None)
                if tier_sql is None:
                    continue
                rows_from, cond, col = tier_sql
                resume = ""
                args = dict(params, left=limit - len(hits))
                if tier is Tier.NAME_CONTAINS:
                    rarest = await _rarest_char(conn, query)
                    if rarest is None:
                        break
                    args["ch"] = rarest
                if after is not None and tier == after[0]:
                    resume = f" AND ({col}, u.id) > (:after_key, :after_user)"
                    args.update(after_key=after[1], after_user=after[2])
                sql, values = positional(
                    f"SELECT {col}, u.id FROM {rows_from} WHERE {cond} AND NOT u.disabled"
                    f"{scope}{resume} ORDER BY {col}, u.id LIMIT :left",
                    args,
                )
                rows = await conn.fetch(sql, *values)
                hits.extend(SearchHit(tier, r[0], r[1]) for r in rows)
                if len(hits) >= limit:
                    break
            return hits

        result: list[SearchHit] = await self._read(job)
        return result

    async def directory_changes(self, since: int, limit: int) -> tuple[list[ChangeRow], int]:
        """Up to ``limit`` changes after ``since`` in order, and the newest change number."""

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

        result: tuple[list[ChangeRow], int] = await self._read(job)
        return result

    async def directory_cursor(self) -> int:
        """The number of the newest directory change (0: none yet)."""
        _, newest = await self.directory_changes(2**62, 1)
        return newest
