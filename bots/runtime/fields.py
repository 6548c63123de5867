"""Checked reads of an event's ``data``: a bad field is a 400 naming its path.

Shared by the bots (``bots/oa/fields.py`` adds the OA event's own readers);
every reader takes ``where``, the path of the object
it reads from, so an error names e.g. ``data.units[2].handlers[0]``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from bots.runtime.model import EventRejected

MAX_PEOPLE = 100
ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CHINA = timezone(timedelta(hours=8))


def when(ms: int) -> str:
    """A deadline as people in the province read it: ``2026-12-03 17:00`` (UTC+8)."""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(CHINA).strftime("%Y-%m-%d %H:%M")


def text(d: dict[str, Any], key: str, max_len: int, where: str = "data") -> str:
    """A required non-blank string of at most ``max_len`` characters."""
    value = d.get(key)
    if value is None:
        raise EventRejected("missing_field", f"{key} is required", f"{where}.{key}")
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise EventRejected(
            "invalid_field", f"{key} must be 1-{max_len} characters", f"{where}.{key}"
        )
    return value


def optional_text(d: dict[str, Any], key: str, max_len: int, where: str = "data") -> str | None:
    return None if d.get(key) is None else text(d, key, max_len, where)


def ident(d: dict[str, Any], key: str, where: str = "data") -> str:
    """A user or unit id: 1-64 of ``A-Z a-z 0-9 _ . : -``."""
    value = text(d, key, 64, where)
    if not ID_RE.fullmatch(value):
        raise EventRejected(
            "invalid_field", f"{key} must be 1-64 of A-Z a-z 0-9 _ . : -", f"{where}.{key}"
        )
    return value


def deadline(d: dict[str, Any], key: str = "due_at", where: str = "data") -> int:
    """A required deadline, ms since the epoch."""
    value = d.get(key)
    if value is None:
        raise EventRejected("missing_field", f"{key} is required", f"{where}.{key}")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise EventRejected(
            "invalid_field", f"{key} must be ms since the epoch (an integer)", f"{where}.{key}"
        )
    return value


def people(d: dict[str, Any], key: str, where: str = "data") -> list[str]:
    """1-100 distinct user ids."""
    value = d.get(key)
    if value is None:
        raise EventRejected("missing_field", f"{key} is required", f"{where}.{key}")
    if not isinstance(value, list) or not value or len(value) > MAX_PEOPLE:
        raise EventRejected(
            "invalid_field", f"{key} must be a list of 1-{MAX_PEOPLE} user ids", f"{where}.{key}"
        )
    for i, u in enumerate(value):
        if not isinstance(u, str) or not ID_RE.fullmatch(u):
            raise EventRejected(
                "invalid_field", "a user id is 1-64 of A-Z a-z 0-9 _ . : -", f"{where}.{key}[{i}]"
            )
    if len(set(value)) != len(value):
        raise EventRejected("invalid_field", f"{key} must not repeat a user", f"{where}.{key}")
    return list(value)


def objects(d: dict[str, Any], key: str, most: int, where: str = "data") -> list[dict[str, Any]]:
    """A list of 0-``most`` objects (``[]`` when absent)."""
    value = d.get(key, [])
    if not isinstance(value, list) or len(value) > most:
        raise EventRejected(
            "invalid_field", f"{key} must be a list of at most {most}", f"{where}.{key}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise EventRejected("invalid_field", "must be an object", f"{where}.{key}[{i}]")
    return list(value)


def obj(d: dict[str, Any], key: str, where: str = "data") -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        raise EventRejected("missing_field", f"{key} is required", f"{where}.{key}")
    if not isinstance(value, dict):
        raise EventRejected("invalid_field", f"{key} must be an object", f"{where}.{key}")
    return value
