"""The directory sync's decisions, for every backend: which lines change what. Pure.

Why here: a sync must change a SQLite file and a PostgreSQL database in
exactly the same way — the same refusals naming the same line, the same
report counts, the same change-log entries — or a deployment moving from one
to the other would see a different directory. So each backend reads the rows
a line needs, asks these functions what to do, and runs only its own SQL
(``store/sqlite/directory.py``; ``store/postgres/directory.py`` and
``directory_members.py``, which batch the same decisions over a run of lines).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from imserver.directory.model import MemberOp, SyncReport, Unit, UnitOp, level_allowed
from imserver.errors import InvalidField
from imserver.store.directory_changes import MEMBER, ChangeRecorder

PATH_END: Final = "\x7f"
"""Above every character a unit path may hold: a subtree is ``[path, path + PATH_END)``."""

UNIT_COLUMNS: Final = "id, parent, name, level, path, sort"
"""The columns of ``units`` that make a :class:`~imserver.directory.model.Unit`, in order."""


def line_error(line: int, key: str, why: str) -> InvalidField:
    """The error naming the sync line (and its field) that cannot be applied."""
    return InvalidField(f"line {line}: {key} {why}", field=f"line[{line}].{key}")


# -- units -------------------------------------------------------------------
def unit_path(line: int, op: UnitOp, old: Unit | None, parent: tuple[str, str] | None) -> str:
    """The path ``op`` puts its unit at, given the parent's stored ``(level, path)``.

    Refuses an unknown parent, a level that may not sit inside the parent's,
    and a move into the unit's own subtree.
    """
    if op.parent is None:
        return f"/{op.id}/"
    if parent is None:
        raise line_error(line, "parent", f"{op.parent!r} is not a known unit (list parents first)")
    parent_level, parent_path = parent
    if not level_allowed(op.level, parent_level):
        raise line_error(line, "level", f"a {op.level} cannot sit inside a {parent_level}")
    if old is not None and parent_path.startswith(old.path):
        raise line_error(line, "parent", "would move the unit into its own subtree")
    return f"{parent_path}{op.id}/"


def check_child_levels(line: int, op: UnitOp, children: Iterable[tuple[str, str]]) -> None:
    """Refuse a new level for ``op``'s unit that one of its ``(id, level)`` children
    cannot sit in."""
    for child, level in children:
        if not level_allowed(level, op.level):
            raise line_error(
                line, "level", f"its child {child!r} ({level}) cannot sit in a {op.level}"
            )


def unit_retitled(old: Unit, op: UnitOp) -> bool:
    """Whether ``op`` changes what a unit that stays in place shows (name, level, order)."""
    return (old.name, old.level, old.sort) != (op.name, op.level, op.sort)


def top_paths(paths: Iterable[str]) -> list[str]:
    """The top-most of ``paths``: removing an ancestor removes its subtree already."""
    tops: list[str] = []
    for path in sorted(paths):
        if not tops or not path.startswith(tops[-1]):
            tops.append(path)
    return tops


# -- members -----------------------------------------------------------------
def check_member_units(
    line: int, op: MemberOp, unit_gens: Mapping[str, int], gen: int, full: bool
) -> None:
    """Refuse a member line naming a unit that is unknown, or (in a full sync) not in it.

    ``unit_gens`` maps each known unit the line names to its ``sync_gen``.
    """
    for i, m in enumerate(op.units):
        key = f"units[{i}].unit"
        if m.unit not in unit_gens:
            raise line_error(line, key, f"{m.unit!r} is not a known unit")
        if full and unit_gens[m.unit] != gen:
            # The sweep would remove the unit and silently drop this membership.
            raise line_error(line, key, f"{m.unit!r} is not in this full sync")


@dataclass(slots=True)
class MemberPlan:
    """What one member line writes; :func:`plan_member` decides it."""

    create: bool = False
    """Insert the user (with search keys and name characters)."""
    rewrite: bool = False
    """An existing user: store the new name, profile and digest, and enable them."""
    rekey: bool = False
    """An existing user: recompute the name's search keys and characters."""
    left: list[str] = field(default_factory=list)
    """Units whose membership of the user is removed."""
    placed: list[tuple[str, str, bool]] = field(default_factory=list)
    """``(unit, title, leader)`` upserted: every unit the line names."""
    changed: bool = False
    """Whether the person's address-book entry changed (a change-log entry)."""


def plan_member(
    op: MemberOp,
    digest: str,
    person: tuple[str, str, bool, str] | None,
    have: Mapping[str, tuple[str, bool]],
    rep: SyncReport,
) -> MemberPlan:
    """Decide ``op`` against the stored ``(name, digest, disabled, py_full)`` and the
    user's current ``{unit: (title, leader)}``; count it in ``rep``."""
    plan = MemberPlan()
    unchanged_person = person is not None and tuple(person[:3]) == (op.name, digest, False)
    if person is None:
        plan.create = plan.changed = True
        rep.members_created += 1
    else:
        if not unchanged_person:
            plan.rewrite = plan.changed = True
            rep.members_updated += 1
        # Search keys follow the name; rows from before migration 8 get theirs now.
        plan.rekey = person[0] != op.name or not person[3]
    want = {m.unit: (m.title, m.leader) for m in op.units}
    for unit in have.keys() - want.keys():
        plan.left.append(unit)
        rep.memberships_removed += 1
        plan.changed = True
    changed_titles = False
    for unit, (title, leader) in want.items():
        if unit not in have:
            rep.memberships_added += 1
            plan.changed = True
        elif have[unit] != (title, leader):
            changed_titles = plan.changed = True
        plan.placed.append((unit, title, leader))
    if changed_titles and unchanged_person:
        rep.members_updated += 1
    return plan


# -- removals ----------------------------------------------------------------
def count_disabled_user(
    user: str, disabled: bool, memberships_left: int, rep: SyncReport, changes: ChangeRecorder
) -> None:
    """Count a removed member line (or a sweep's removal) that disabled ``user`` (if they
    were active) and dropped ``memberships_left`` memberships."""
    rep.memberships_removed += memberships_left
    if disabled or memberships_left:
        changes.note(MEMBER, [user])
    if disabled:
        rep.members_removed += 1
        rep.removed_users.append(user)
