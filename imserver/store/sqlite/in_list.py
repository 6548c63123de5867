"""``WHERE x IN (...)`` over any number of ids, within SQLite's parameter limit."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

CHUNK = 500  # well under SQLITE_MAX_VARIABLE_NUMBER on every build


def select_in(
    conn: sqlite3.Connection, sql: str, ids: Iterable[str], before: tuple[Any, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` — whose ``{marks}`` becomes the placeholders — for every id.

    ``before`` are parameters that come ahead of the ids in the statement.
    Ids are de-duplicated; each chunk is one statement.
    """
    wanted = list(dict.fromkeys(ids))
    for i in range(0, len(wanted), CHUNK):
        chunk = wanted[i : i + CHUNK]
        yield from conn.execute(sql.format(marks=",".join("?" * len(chunk))), (*before, *chunk))
