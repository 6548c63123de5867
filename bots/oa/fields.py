"""Checked reads of an OA event's ``data``: a bad field is a 400 naming its path."""

from __future__ import annotations

from typing import Any

from bots.runtime import EventRejected
from bots.runtime.fields import text

__all__ = ["optional_int", "text", "user_list"]

MAX_APPROVERS = 100


def optional_int(d: dict[str, Any], key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise EventRejected("invalid_field", f"{key} must be a positive integer", f"data.{key}")
    return value


def user_list(d: dict[str, Any], key: str, *, required: bool) -> list[str]:
    """A list of distinct user ids; ``approvers`` must have at least one."""
    value = d.get(key)
    if value is None and not required:
        return []
    if value is None:
        raise EventRejected("missing_field", f"{key} is required", f"data.{key}")
    if not isinstance(value, list) or (required and not value) or len(value) > MAX_APPROVERS:
        raise EventRejected(
            "invalid_field", f"{key} must be a list of 1-{MAX_APPROVERS} user ids", f"data.{key}"
        )
    for i, u in enumerate(value):
        if not isinstance(u, str) or not u or len(u) > 64:
            raise EventRejected("invalid_field", "a user id is 1-64 characters", f"data.{key}[{i}]")
    if len(set(value)) != len(value):
        raise EventRejected("invalid_field", f"{key} must not repeat a user", f"data.{key}")
    return list(value)
