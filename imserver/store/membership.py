"""A group's members, for every backend: who a new group holds, and which statements a
change runs, in which order.

Why shared: a new group's roles, and archiving, renaming, removing, adding and
re-roling members, must come out the same with the same limit on both
backends; only the spelling of each statement differs, so each backend hands
in its :class:`MembershipSql` and runs the rows this module lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imserver.store.records import ROLE_MEMBER, ROLE_OWNER, MembershipChange
from imserver.store.refusals import too_many_members


@dataclass(slots=True, frozen=True)
class MembershipSql:
    """One backend's statements for a membership change (parameters in the order shown)."""

    archive: str
    """``(conv,)``: mark the conversation archived."""
    rename: str
    """``(name, conv)``."""
    remove: str
    """``(conv, user)``: drop one member."""
    add: str
    """``(conv, user, role)``: add a member unless already there."""
    set_role: str
    """``(role, conv, user)``."""


def membership_writes(
    conv: str, change: MembershipChange, sql: MembershipSql
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """``(statement, rows)`` to run with ``executemany``, in order, for ``change``.

    After running them, a change that adds members must pass
    :func:`check_member_limit` (the job's transaction undoes everything if not).
    """
    writes: list[tuple[str, list[tuple[Any, ...]]]] = []
    if change.archive:
        writes.append((sql.archive, [(conv,)]))
    if change.rename is not None:
        writes.append((sql.rename, [(change.rename, conv)]))
    if change.remove:
        writes.append((sql.remove, [(conv, u) for u in change.remove]))
    if change.add:
        writes.append((sql.add, [(conv, u, role) for u, role in change.add]))
    if change.set_roles:
        writes.append((sql.set_role, [(role, conv, u) for u, role in change.set_roles]))
    return writes


def group_members(owner: str, members: Iterable[str]) -> list[tuple[str, str]]:
    """A new group's ``(user, role)`` rows: ``owner`` first as owner, then every
    other named user once (in the order given) as a member."""
    others = [m for m in dict.fromkeys(members) if m != owner]
    return [(owner, ROLE_OWNER), *((m, ROLE_MEMBER) for m in others)]


def check_member_limit(count: int, limit: int) -> None:
    """Refuse a group that would have more than ``limit`` members."""
    if count > limit:
        raise too_many_members(count, limit)
