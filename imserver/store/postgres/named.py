"""``:name`` placeholders → PostgreSQL's ``$n``, so one statement text can serve both backends.

SQLite takes named parameters; asyncpg only positional ones, and PostgreSQL
refuses a declared parameter the statement never uses. :func:`positional`
numbers the names in order of first use and returns exactly those values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

_NAME: Final = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")  # not a ``::type`` cast


def positional(sql: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """``sql`` with each ``:name`` replaced by ``$n``, and the values in ``$n`` order.

    Raises ``KeyError`` naming a placeholder that ``params`` lacks.
    """
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            if name not in params:
                raise KeyError(f"no value for :{name}")
            order[name] = len(order) + 1
        return f"${order[name]}"

    text = _NAME.sub(number, sql)
    return text, [params[name] for name in order]
