"""Which people, groups and units a push, update or notice names, and whether the app may.

An app's ``scope`` (``*``, ``user:<id>``, ``group:<conv>``, ``unit:<id>``) is
the set of people it may reach. Every principal a request names counts, not
only its recipients: a card whose ``escalate_to`` is outside the scope would
otherwise hand the card (and a 督办 notice) to someone the app may not reach
once it is overdue. So the request is read once for every principal, each
with its field path (``to.users[2]``, ``card.escalate_to``), and checked as a
whole; the error names the first path outside.

A person is in scope when the scope has ``*`` or ``user:<them>``, or when
they are — at the time of the check — a member of a unit in the subtree of
a scoped ``unit:``. Scoped groups make the group reachable (``to.groups``),
not each member one by one. The escalation target is checked again when the
escalation fires, since scope and unit members may have changed since the push.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from imserver.directory.model import Unit
from imserver.errors import OutOfScope
from imserver.store.records import AppRecord

Kind = Literal["user", "group", "unit"]
#: Above this many people to place, one query for the scoped units' members
#: costs less than one membership query per person.
BULK_MEMBER_QUERY = 50


@dataclass(slots=True, frozen=True)
class Named:
    """One principal a request names: where (``path``), what (``kind``) and who (``id``)."""

    path: str
    kind: Kind
    id: str
    #: Policy actors must be card holders anyway; a holder reached through an
    #: in-scope group or unit is reachable, so for them holding the card counts.
    holder_counts: bool = False

    @property
    def label(self) -> str:
        """The name in ``details.outside`` (users and groups bare, units ``unit:<id>``)."""
        return f"unit:{self.id}" if self.kind == "unit" else self.id


def named_in_to(
    users: Sequence[str],
    group_ids: Sequence[str],
    unit_ids: Sequence[str],
    prefix: str = "to",
) -> list[Named]:
    """The recipients of a push or notice (``to``), already type-checked."""
    out = [Named(f"{prefix}.users[{i}]", "user", u) for i, u in enumerate(users)]
    out += [Named(f"{prefix}.groups[{i}]", "group", g) for i, g in enumerate(group_ids)]
    out += [Named(f"{prefix}.units[{i}].id", "unit", u) for i, u in enumerate(unit_ids)]
    return out


def named_in_card(doc: dict[str, Any], prefix: str = "card") -> list[Named]:
    """The people a normalised card document names: its approvers and escalation target.

    ``policy.actors`` holds every approver of every policy type (``any``,
    ``all``, and each step of ``sequential``); ``inputs[].required_for``
    names actions, not people. Keep this in step with ``cards.model``.
    """
    out: list[Named] = []
    policy = doc.get("policy")
    if policy is not None:
        out += [
            Named(f"{prefix}.policy.actors[{i}]", "user", a, holder_counts=True)
            for i, a in enumerate(policy["actors"])
        ]
    if doc.get("escalate_to") is not None:
        out.append(Named(f"{prefix}.escalate_to", "user", doc["escalate_to"]))
    return out


def named_in_update(changes: dict[str, Any], prefix: str = "update") -> list[Named]:
    """The people an update names (of the updatable keys, only ``escalate_to`` names one)."""
    return named_in_card({"escalate_to": changes.get("escalate_to")}, prefix)


class ScopeStore(Protocol):
    async def units_by_ids(self, ids: Any) -> dict[str, Unit]: ...

    async def user_memberships(self, user: str) -> list[tuple[Unit, str, bool]]: ...

    async def unit_recipients(self, targets: Any) -> set[str]: ...


class AppScope:
    """Checks named principals against an app's scope, reading units from the store."""

    def __init__(self, store: ScopeStore) -> None:
        self._store = store

    @staticmethod
    def reaches_everyone(app: AppRecord) -> bool:
        """Scope ``*``: every check passes, so callers may skip listing who is named."""
        return "*" in app.scope

    async def check(
        self, app: AppRecord, named: Iterable[Named], holders: Iterable[str] = ()
    ) -> None:
        """Raise ``out_of_scope`` (403) naming the first path outside, else return."""
        outside = await self.outside(app, named, holders)
        if outside:
            shown = ", ".join(f"{n.path} ({n.id})" for n in outside[:10])
            raise OutOfScope(
                f"outside app {app.app_id}'s scope: {shown}",
                field=outside[0].path,
                details={
                    "outside": list(dict.fromkeys(n.label for n in outside))[:100],
                    "fields": [n.path for n in outside[:100]],
                },
            )

    async def outside(
        self, app: AppRecord, named: Iterable[Named], holders: Iterable[str] = ()
    ) -> list[Named]:
        """The principals in ``named`` that ``app`` may not reach, in request order."""
        items = list(named)
        if not items or "*" in app.scope:
            return []
        users = {e[5:] for e in app.scope if e.startswith("user:")}
        groups = {e[6:] for e in app.scope if e.startswith("group:")}
        held = set(holders)
        scope_paths = await self._unit_paths([e[5:] for e in app.scope if e.startswith("unit:")])
        to_place = {
            n.id
            for n in items
            if n.kind == "user" and n.id not in users and not (n.holder_counts and n.id in held)
        }
        placed = await self._in_scoped_units(to_place, scope_paths)
        unit_ids = [n.id for n in items if n.kind == "unit"]
        named_units = await self._store.units_by_ids(unit_ids) if unit_ids else {}
        out = []
        for n in items:
            if n.kind == "user":
                ok = n.id not in to_place or n.id in placed
            elif n.kind == "group":
                ok = n.id in groups
            else:
                unit = named_units.get(n.id)
                ok = unit is not None and any(unit.path.startswith(p) for p in scope_paths)
            if not ok:
                out.append(n)
        return out

    async def _unit_paths(self, unit_ids: list[str]) -> list[str]:
        """The tree paths of the existing units among ``unit_ids``."""
        if not unit_ids:
            return []
        return [u.path for u in (await self._store.units_by_ids(unit_ids)).values()]

    async def _in_scoped_units(self, people: set[str], scope_paths: list[str]) -> set[str]:
        """Those of ``people`` who are now members of a unit under one of ``scope_paths``."""
        if not people or not scope_paths:
            return set()
        if len(people) > BULK_MEMBER_QUERY:
            members = await self._store.unit_recipients((p, True) for p in scope_paths)
            return people & members
        inside = set()
        for person in people:
            memberships = await self._store.user_memberships(person)
            if any(u.path.startswith(p) for u, _, _ in memberships for p in scope_paths):
                inside.add(person)
        return inside
