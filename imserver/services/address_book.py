"""The address book (通讯录) for ordinary users: look up, browse, search, catch up.

What a user may see is decided in one place,
:func:`imserver.directory.visibility.person_view`; this service only fetches
pages from the store (bounded, keyset-paged, one query per kind of row) and
passes each person through it. Cursors are opaque to clients
(:mod:`imserver.directory.cursors`).
"""

from __future__ import annotations

from typing import Any, Protocol

from imserver.directory.cursors import decode_cursor, encode_cursor
from imserver.directory.model import Unit
from imserver.directory.pinyin import query_key
from imserver.directory.search_rank import Tier
from imserver.directory.visibility import Placement, Viewer, person_view
from imserver.errors import InvalidField, NoSuchUnit
from imserver.masking import PII_READ
from imserver.services.caller import Caller
from imserver.services.directory import ProfileSealer, ancestors
from imserver.store.directory_changes import MEMBER, UNIT
from imserver.store.records import ChangeRow, LastHit, PersonRow, SearchHit


class AddressBookStore(Protocol):
    async def people(self, users: Any) -> dict[str, PersonRow]:
        """The active ones among ``users``, with their units (two queries)."""

    async def get_unit(self, unit_id: str) -> Unit | None: ...

    async def units_by_ids(self, ids: Any) -> dict[str, Unit]: ...

    async def child_units(self, unit_id: str) -> list[tuple[Unit, int]]: ...

    async def unit_people(self, path: str, recursive: bool, after: str, limit: int) -> list[str]:
        """Active people in the unit (and below), by user id, after ``after``."""

    async def search_people(
        self, query: str, key: str | None, within: str | None, after: LastHit | None, limit: int
    ) -> list[SearchHit]:
        """Up to ``limit`` matches in rank order, after the ``(tier, key, user)`` cursor.

        ``within`` is a unit path: only people with a unit in that subtree.
        """

    async def directory_changes(self, since: int, limit: int) -> tuple[list[ChangeRow], int]:
        """Up to ``limit`` changes after ``since`` in order, and the newest change number."""

    async def users_with_scope(self, users: Any, scope: str) -> set[str]: ...


def unit_view(unit: Unit) -> dict[str, Any]:
    return {
        "id": unit.id,
        "parent": unit.parent,
        "name": unit.name,
        "level": unit.level,
        "path": unit.path,
        "sort": unit.sort,
    }


class AddressBook:
    def __init__(self, store: AddressBookStore, sealer: ProfileSealer) -> None:
        self._store = store
        self._sealer = sealer

    async def _viewer(self, caller: Caller) -> Viewer:
        scoped = await self._store.users_with_scope([caller.user], PII_READ)
        return Viewer(caller.user, caller.user in scoped)

    async def _views(self, viewer: Viewer, users: list[str]) -> list[dict[str, Any]]:
        """People in ``users`` order (inactive ones left out), as ``viewer`` sees them."""
        rows = await self._store.people(users)
        return [
            person_view(
                viewer,
                row.user,
                row.name,
                [Placement(*p) for p in row.placements],
                self._sealer.open(row.user, row.profile),
            )
            for user in users
            if (row := rows.get(user)) is not None
        ]

    async def _unit(self, unit_id: str) -> Unit:
        unit = await self._store.get_unit(unit_id)
        if unit is None:
            raise NoSuchUnit(f"no unit {unit_id!r}")
        return unit

    # -- requests ------------------------------------------------------------
    async def users(self, caller: Caller, users: tuple[str, ...]) -> dict[str, Any]:
        """``directory.users``: profiles of the given ids; the rest are ``missing``."""
        views = await self._views(await self._viewer(caller), list(users))
        found = {v["user"] for v in views}
        return {"users": views, "missing": [u for u in users if u not in found]}

    async def unit(
        self, caller: Caller, unit_id: str, recursive: bool, cursor: str | None, limit: int
    ) -> dict[str, Any]:
        """``directory.unit``: the unit, its ancestors and sub-units (first page), people."""
        unit = await self._unit(unit_id)
        after = ""
        if cursor is not None:
            (cursor_unit, cursor_recursive, after_user) = decode_cursor(
                cursor, "unit", (str, int, str)
            )
            if (cursor_unit, cursor_recursive) != (unit.id, int(recursive)):
                raise InvalidField("'cursor' belongs to another listing", field="cursor")
            after = str(after_user)
        people = await self._store.unit_people(unit.path, recursive, after, limit + 1)
        more = len(people) > limit
        people = people[:limit]
        out: dict[str, Any] = {
            "unit": unit_view(unit),
            "members": await self._views(await self._viewer(caller), people),
            "cursor": encode_cursor("unit", (unit.id, int(recursive), people[-1]))
            if more
            else None,
        }
        if cursor is None:
            chain = await self._store.units_by_ids(ancestors(unit)[:-1])
            out["ancestors"] = [
                {"id": u, "name": chain[u].name} for u in ancestors(unit)[:-1] if u in chain
            ]
            out["children"] = [
                {**unit_view(child), "members": count}
                for child, count in await self._store.child_units(unit.id)
            ]
        return out

    async def search(
        self, caller: Caller, query: str, unit_id: str | None, cursor: str | None, limit: int
    ) -> dict[str, Any]:
        """``directory.search``: by name, pinyin initials or full pinyin, ranked, paged."""
        within = (await self._unit(unit_id)).path if unit_id is not None else None
        after: LastHit | None = None
        listing = f"{unit_id or ''}|{query}"  # a cursor continues the search it came from
        if cursor is not None:
            cursor_listing, tier, key, user = decode_cursor(cursor, "search", (str, int, str, str))
            if tier not in {t.value for t in Tier}:
                raise InvalidField(
                    "'cursor' is not a search cursor from this server", field="cursor"
                )
            if cursor_listing != listing:
                raise InvalidField("'cursor' belongs to another search", field="cursor")
            after = (Tier(tier), str(key), str(user))
        hits = await self._store.search_people(query, query_key(query), within, after, limit + 1)
        more = len(hits) > limit
        hits = hits[:limit]
        views = await self._views(await self._viewer(caller), [h.user for h in hits])
        last = hits[-1] if hits else None
        return {
            "members": views,
            "cursor": encode_cursor("search", (listing, int(last.tier), last.key, last.user))
            if more and last is not None
            else None,
        }

    async def changes(self, caller: Caller, since: int, limit: int) -> dict[str, Any]:
        """``directory.changes``: what changed after change number ``since``, in order."""
        rows, newest = await self._store.directory_changes(since, limit)
        if since > newest:
            # A cursor from another server or from before a restore: starting over
            # is the only way to a correct copy, so say so rather than answer "nothing".
            raise InvalidField(
                f"'since' is past this server's newest change ({newest}); start again from 0",
                field="since",
            )
        unit_ids = [r.id for r in rows if r.kind == UNIT]
        member_ids = [r.id for r in rows if r.kind == MEMBER]
        units = await self._store.units_by_ids(unit_ids)
        members = await self._views(await self._viewer(caller), member_ids)
        present = {m["user"] for m in members}
        return {
            "units": [unit_view(units[u]) for u in unit_ids if u in units],
            "removed_units": [u for u in unit_ids if u not in units],
            "members": members,
            "removed_members": [u for u in member_ids if u not in present],
            "cursor": rows[-1].seq if rows else since,
            "more": bool(rows) and rows[-1].seq < newest,
        }
