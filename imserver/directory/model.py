"""Directory values and the validation of sync lines. Pure: no I/O.

The tree follows the province's five administrative levels — province, city,
county, township, village — with departments inside any of them. A unit's
``path`` (``/jx/nc/xh/``) is its ancestors' ids joined, so "everything under
this unit" is one indexed prefix range, and a move rewrites the paths of the
moved subtree only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from imserver.errors import InvalidField
from imserver.protocol.fields import is_user_id

LEVELS = ("province", "city", "county", "township", "village", "department")
RANK = {level: i for i, level in enumerate(LEVELS[:5])}
UNIT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
PROFILE_KEYS = ("phone", "id_number", "email", "office_phone")
SENSITIVE_PROFILE_KEYS = ("phone", "id_number")


@dataclass(slots=True, frozen=True)
class Unit:
    id: str
    parent: str | None
    name: str
    level: str
    path: str
    sort: int = 0

    @property
    def depth(self) -> int:
        return self.path.count("/") - 1


@dataclass(slots=True, frozen=True)
class UnitOp:
    id: str
    name: str
    level: str
    parent: str | None
    sort: int


@dataclass(slots=True, frozen=True)
class Membership:
    unit: str
    title: str = ""
    leader: bool = False


@dataclass(slots=True, frozen=True)
class MemberOp:
    user: str
    name: str
    units: tuple[Membership, ...]
    profile: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class RemoveUnitOp:
    id: str


@dataclass(slots=True, frozen=True)
class RemoveMemberOp:
    user: str


SyncOp = UnitOp | MemberOp | RemoveUnitOp | RemoveMemberOp


def level_allowed(child: str, parent: str | None) -> bool:
    """Departments sit anywhere; an administrative level sits below a higher one."""
    if parent is None:
        return True
    if child == "department":
        return True
    if parent == "department":
        return False  # an administrative area is never inside a department
    return RANK[child] > RANK[parent]


def _fail(line: int, path: str, why: str) -> InvalidField:
    return InvalidField(f"line {line}: {path} {why}", field=f"line[{line}].{path}")


def _str(obj: dict[str, Any], key: str, line: int, max_len: int, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise _fail(line, key, f"must be a string of 1-{max_len} characters")
    return value


def _unit_id(value: Any, line: int, path: str) -> str:
    if not isinstance(value, str) or UNIT_ID_RE.fullmatch(value) is None:
        raise _fail(line, path, "must be a unit id (1-64 of A-Z a-z 0-9 _ . -)")
    return value


def parse_sync_line(obj: Any, line: int, *, full: bool) -> SyncOp:
    """One line of a directory sync (NDJSON), or ``InvalidField`` naming line and key."""
    if not isinstance(obj, dict):
        raise _fail(line, "line", "must be a JSON object")
    op = obj.get("op")
    if op == "unit":
        level = obj.get("level")
        if level not in LEVELS:
            raise _fail(line, "level", f"must be one of {', '.join(LEVELS)}")
        parent = obj.get("parent")
        sort = obj.get("sort", 0)
        if isinstance(sort, bool) or not isinstance(sort, int) or not 0 <= sort < 2**31:
            raise _fail(line, "sort", "must be a non-negative integer")
        return UnitOp(
            id=_unit_id(obj.get("id"), line, "id"),
            name=_str(obj, "name", line, 128),
            level=level,
            parent=None if parent is None else _unit_id(parent, line, "parent"),
            sort=sort,
        )
    if op == "member":
        user = obj.get("user")
        if not is_user_id(user):
            raise _fail(line, "user", "must be a user id")
        assert isinstance(user, str)
        units = obj.get("units", [])
        if not isinstance(units, list) or len(units) > 50:
            raise _fail(line, "units", "must be a list of at most 50 {unit, title, leader}")
        memberships: dict[str, Membership] = {}
        for i, u in enumerate(units):
            if not isinstance(u, dict):
                raise _fail(line, f"units[{i}]", "must be an object")
            unit = _unit_id(u.get("unit"), line, f"units[{i}].unit")
            leader = u.get("leader", False)
            if not isinstance(leader, bool):
                raise _fail(line, f"units[{i}].leader", "must be true or false")
            title = u.get("title", "")
            if not isinstance(title, str) or len(title) > 64:
                raise _fail(line, f"units[{i}].title", "must be a string of at most 64 characters")
            memberships[unit] = Membership(unit, title, leader)
        profile_in = obj.get("profile", {})
        if not isinstance(profile_in, dict):
            raise _fail(line, "profile", "must be an object")
        profile: dict[str, str] = {}
        for key, value in profile_in.items():
            if key not in PROFILE_KEYS:
                raise _fail(line, f"profile.{key}", f"is not one of {', '.join(PROFILE_KEYS)}")
            if not isinstance(value, str) or len(value) > 128:
                raise _fail(line, f"profile.{key}", "must be a string of at most 128 characters")
            if value:
                profile[key] = value
        return MemberOp(
            user=user,
            name=_str(obj, "name", line, 64),
            units=tuple(memberships.values()),
            profile=profile,
        )
    if op in ("remove_unit", "remove_member"):
        if full:
            raise _fail(line, "op", "is not allowed in a full sync (absence removes)")
        if op == "remove_unit":
            return RemoveUnitOp(_unit_id(obj.get("id"), line, "id"))
        user = obj.get("user")
        if not is_user_id(user):
            raise _fail(line, "user", "must be a user id")
        assert isinstance(user, str)
        return RemoveMemberOp(user)
    raise _fail(line, "op", "must be unit, member, remove_unit or remove_member")


@dataclass(slots=True)
class SyncReport:
    """What a sync changed; an idempotent repeat reports all zeros."""

    units_created: int = 0
    units_updated: int = 0
    units_moved: int = 0
    units_removed: int = 0
    members_created: int = 0
    members_updated: int = 0
    members_removed: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0
    lines: int = 0
    removed_users: list[str] = field(default_factory=list)

    def add(self, other: SyncReport) -> None:
        for name in self.__dataclass_fields__:
            if name == "removed_users":
                self.removed_users.extend(other.removed_users)
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, Any]:
        return {
            "units": {
                "created": self.units_created,
                "updated": self.units_updated,
                "moved": self.units_moved,
                "removed": self.units_removed,
            },
            "members": {
                "created": self.members_created,
                "updated": self.members_updated,
                "removed": self.members_removed,
            },
            "memberships": {"added": self.memberships_added, "removed": self.memberships_removed},
            "lines": self.lines,
        }
