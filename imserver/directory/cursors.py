"""Opaque paging cursors for the address book. Pure.

A cursor is the position after the last row of a page (a tuple of strings
and integers), sent to the client as URL-safe base64 of JSON. Clients pass it
back unchanged; anything else is refused with ``invalid_field`` rather than
silently restarting from the top.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from imserver.errors import InvalidField

Position = tuple[str | int, ...]


def encode_cursor(kind: str, position: Position) -> str:
    raw = orjson.dumps([kind, *position])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, shape: tuple[type, ...]) -> Position:
    """The position in ``cursor``, which must be a ``kind`` cursor of ``shape``."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        value = None
    if (
        not isinstance(value, list)
        or len(value) != len(shape) + 1
        or value[0] != kind
        or not all(
            isinstance(v, t) and not isinstance(v, bool)
            for v, t in zip(value[1:], shape, strict=True)
        )
    ):
        raise InvalidField(f"'cursor' is not a {kind} cursor from this server", field="cursor")
    return tuple(value[1:])
