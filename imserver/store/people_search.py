"""The address book's people search, for every SQL backend: tiers, statements, hits. Pure.

Why here: the search tiers of :mod:`imserver.directory.search_rank` must
rank and page the same on SQLite and PostgreSQL (a cursor handed out by one
node is resumed by another), so the statements are built once, with named
parameters (``:q``); SQLite runs them as they are and PostgreSQL numbers them
(``store/postgres/named.py``). Each tier is one range scan on
``users_by_name``, ``users_by_initials`` or ``users_by_pinyin``, and the
"contains" tier starts from the query's rarest character in
``user_name_chars``, so no tier scans every user.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from imserver.directory.search_rank import Tier
from imserver.store.directory_sync import PATH_END
from imserver.store.records import LastHit, PersonRow, SearchHit

NAME_END: Final = "\U0010ffff"
"""Above every character a name may hold."""
KEY_END: Final = "{"
"""Above every character of a pinyin key (``[0-9a-z]``)."""
DENSE_SUBTREE: Final = 5000
"""A recursive listing whose subtree holds at least this many memberships walks
users in id order instead of sorting the subtree's members (``unit_people``)."""


def tier_sql(tier: Tier, has_key: bool) -> tuple[str, str, str] | None:
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


def rarest_char(query: str, counts: Mapping[str, int]) -> str | None:
    """The query's character fewest names hold (``counts``: names per character present);
    None if some character is in no name, so nothing can contain the query."""
    chars = set(query)
    if any(ch not in counts for ch in chars):
        return None
    return min(sorted(chars), key=lambda ch: (counts[ch], ch))


class PeopleSearch:
    """One ``search_people`` call: which tiers to run, each tier's statement, the hits.

    The backend's loop is: for each tier of :meth:`tiers`, find the rarest
    character if :meth:`needs_rarest`, run :meth:`statement` (stop if it is
    ``None``) and hand the rows to :meth:`add`; then read :attr:`hits`.
    ``active`` is the backend's spelling of "``u`` is not disabled".
    """

    __slots__ = ("_after", "_has_key", "_limit", "_params", "_tail", "hits")

    def __init__(
        self,
        query: str,
        key: str | None,
        within: str | None,
        after: LastHit | None,
        limit: int,
        *,
        active: str,
    ) -> None:
        self._after = after
        self._has_key = key is not None
        self._limit = limit
        self._params: dict[str, Any] = {
            "q": query,
            "q_end": query + NAME_END,
            "k": key or "",
            "k_end": (key or "") + KEY_END,
            "p": within or "",
            "p_end": (within or "") + PATH_END,
        }
        scope = (
            " AND EXISTS (SELECT 1 FROM unit_members m JOIN units un ON un.id = m.unit"
            " WHERE m.user = u.id AND un.path >= :p AND un.path < :p_end)"
            if within is not None
            else " AND EXISTS (SELECT 1 FROM unit_members m WHERE m.user = u.id)"
        )
        self._tail = f" AND {active}{scope}"
        self.hits: list[SearchHit] = []

    def tiers(self) -> Iterator[Tier]:
        """The tiers still to run, in rank order, until the page is full."""
        for tier in Tier:
            if self._after is not None and tier < self._after[0]:
                continue
            if tier_sql(tier, self._has_key) is None:
                continue
            yield tier
            if len(self.hits) >= self._limit:
                return

    @staticmethod
    def needs_rarest(tier: Tier) -> bool:
        """Whether :meth:`statement` for ``tier`` needs the query's rarest character."""
        return tier is Tier.NAME_CONTAINS

    def statement(self, tier: Tier, rarest: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """The SQL (named parameters) and arguments of ``tier``'s next rows;
        None when no name can match, so the search is over."""
        found = tier_sql(tier, self._has_key)
        if found is None or (self.needs_rarest(tier) and rarest is None):
            return None
        rows_from, cond, col = found
        args = dict(self._params, left=self._limit - len(self.hits))
        if rarest is not None:
            args["ch"] = rarest
        resume = ""
        if self._after is not None and tier == self._after[0]:
            resume = f" AND ({col}, u.id) > (:after_key, :after_user)"
            args.update(after_key=self._after[1], after_user=self._after[2])
        sql = (
            f"SELECT {col}, u.id FROM {rows_from} WHERE {cond}{self._tail}{resume}"
            f" ORDER BY {col}, u.id LIMIT :left"
        )
        return sql, args

    def add(self, tier: Tier, rows: Iterable[Any]) -> None:
        """Take ``(key, user)`` rows of ``tier``'s statement as hits."""
        self.hits.extend(SearchHit(tier, r[0], r[1]) for r in rows)


def person_rows(
    found: Mapping[str, tuple[str, dict[str, str]]],
    placements: Iterable[tuple[str, str, str, str, bool, str]],
) -> dict[str, PersonRow]:
    """People from ``{user: (name, profile)}`` and their ``(user, unit, unit name, title,
    leader, unit path)`` memberships, placed in path order."""
    placed: dict[str, list[tuple[str, str, str, bool, str]]] = {u: [] for u in found}
    for user, unit, unit_name, title, leader, path in placements:
        placed[user].append((unit, unit_name, title, bool(leader), path))
    return {
        user: PersonRow(
            user, name, profile, tuple(p[:4] for p in sorted(placed[user], key=lambda p: p[4]))
        )
        for user, (name, profile) in found.items()
    }
