"""Typed reading of request fields with stable errors.

Each accessor either returns a value of the promised type or raises
:class:`InvalidField` naming the field's path, so request parsing reads as a
list of declarations instead of nested ``isinstance`` checks.
"""

from __future__ import annotations

import re
from typing import Any

from imserver.errors import InvalidField

USER_ID_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
CONV_ID_RE = re.compile(
    r"(dm:[A-Za-z0-9_.@-]{1,64}:[A-Za-z0-9_.@-]{1,64}"
    r"|g:[A-Za-z0-9_-]{8,32}"
    r"|n:[a-z0-9_-]{1,32}:[A-Za-z0-9_.@-]{1,64}"
    r"|b:[a-z0-9_-]{1,32}:[A-Za-z0-9_-]{1,64})"
)
APP_ID_RE = re.compile(r"[a-z0-9_-]{1,32}")
FILE_ID_RE = re.compile(r"[0-9a-f]{64}")

MAX_LIST = 1000


def is_user_id(value: object) -> bool:
    return isinstance(value, str) and USER_ID_RE.fullmatch(value) is not None


class Fields:
    """A view of one frame (or sub-object) that reads typed fields."""

    __slots__ = ("_obj", "_prefix")

    def __init__(self, obj: dict[str, Any], prefix: str = "") -> None:
        self._obj = obj
        self._prefix = prefix

    def _path(self, name: str) -> str:
        return f"{self._prefix}{name}"

    @property
    def raw(self) -> dict[str, Any]:
        """The underlying object, for callers that validate it themselves."""
        return self._obj

    def has(self, name: str) -> bool:
        return self._obj.get(name) is not None

    def _get(self, name: str, required: bool) -> Any:
        value = self._obj.get(name)
        if value is None and required:
            raise InvalidField(f"missing field {self._path(name)!r}", field=self._path(name))
        return value

    def string(
        self, name: str, *, required: bool = True, min_len: int = 1, max_len: int = 256
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidField(f"{self._path(name)!r} must be a string", field=self._path(name))
        if not min_len <= len(value) <= max_len:
            raise InvalidField(
                f"{self._path(name)!r} must be {min_len}-{max_len} characters long",
                field=self._path(name),
            )
        return value

    def req_string(self, name: str, *, min_len: int = 1, max_len: int = 256) -> str:
        value = self.string(name, min_len=min_len, max_len=max_len)
        assert value is not None
        return value

    def integer(
        self, name: str, *, required: bool = True, minimum: int = 0, maximum: int = 2**62
    ) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidField(f"{self._path(name)!r} must be an integer", field=self._path(name))
        if not minimum <= value <= maximum:
            raise InvalidField(
                f"{self._path(name)!r} must be between {minimum} and {maximum}",
                field=self._path(name),
            )
        return value

    def req_integer(self, name: str, *, minimum: int = 0, maximum: int = 2**62) -> int:
        value = self.integer(name, minimum=minimum, maximum=maximum)
        assert value is not None
        return value

    def boolean(self, name: str, *, default: bool = False) -> bool:
        value = self._obj.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidField(
                f"{self._path(name)!r} must be true or false", field=self._path(name)
            )
        return value

    def user_id(self, name: str) -> str:
        value = self._get(name, True)
        if not is_user_id(value):
            raise InvalidField(
                f"{self._path(name)!r} must be a user id (1-64 of A-Z a-z 0-9 _ . @ -)",
                field=self._path(name),
            )
        assert isinstance(value, str)
        return value

    def conv_id(self, name: str = "conv") -> str:
        value = self._get(name, True)
        if not isinstance(value, str) or CONV_ID_RE.fullmatch(value) is None:
            raise InvalidField(
                f"{self._path(name)!r} must be a conversation id (dm:<a>:<b> or g:<id>)",
                field=self._path(name),
            )
        return value

    def user_list(
        self,
        name: str,
        *,
        required: bool = True,
        max_items: int = MAX_LIST,
        allow_empty: bool = False,
    ) -> tuple[str, ...]:
        value = self._get(name, required)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise InvalidField(
                f"{self._path(name)!r} must be a list of user ids", field=self._path(name)
            )
        if not value and not allow_empty:
            raise InvalidField(f"{self._path(name)!r} must not be empty", field=self._path(name))
        if len(value) > max_items:
            raise InvalidField(
                f"{self._path(name)!r} may hold at most {max_items} users", field=self._path(name)
            )
        for i, item in enumerate(value):
            if not is_user_id(item):
                raise InvalidField(
                    f"{self._path(name)}[{i}] is not a valid user id",
                    field=f"{self._path(name)}[{i}]",
                )
        # Keep first-seen order, drop repeats: a repeated id is harmless, not an error.
        return tuple(dict.fromkeys(value))

    def sub(self, name: str, *, required: bool = True) -> Fields | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise InvalidField(f"{self._path(name)!r} must be an object", field=self._path(name))
        return Fields(value, prefix=f"{self._path(name)}.")

    def req_sub(self, name: str) -> Fields:
        value = self.sub(name)
        assert value is not None
        return value

    def seq_map(self, name: str, *, max_items: int = 100_000) -> dict[str, int]:
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidField(
                f"{self._path(name)!r} must map conversation ids to seqs", field=self._path(name)
            )
        if len(value) > max_items:
            raise InvalidField(f"{self._path(name)!r} has too many entries", field=self._path(name))
        out: dict[str, int] = {}
        for conv, seq in value.items():
            if not isinstance(conv, str) or CONV_ID_RE.fullmatch(conv) is None:
                raise InvalidField(
                    f"{self._path(name)} has an invalid conversation id", field=self._path(name)
                )
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= 2**62:
                raise InvalidField(
                    f"{self._path(name)}[{conv!r}] must be a non-negative integer",
                    field=f"{self._path(name)}[{conv}]",
                )
            out[conv] = seq
        return out
