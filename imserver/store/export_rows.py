"""Rows moving from the SQLite store to PostgreSQL: value conversion, digests, reports. Pure.

Why a module of its own: what "without loss" means is decided here, apart
from the I/O. A SQLite value is carried over only if the PostgreSQL column
can hold exactly it — an integer into ``BIGINT``, 0/1 into ``BOOLEAN``, the
UTF-8 bytes SQLite keeps JSON in (``BLOB``) as the same text — and anything
else stops the move naming the table, column and key rather than being
coerced. Both sides are then reduced to the same normal form and hashed in
key order, so "equal digests" means every value of every row is equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

INTEGER_TYPES: Final = frozenset({"bigint", "integer", "smallint"})
"""PostgreSQL ``data_type`` names of the integer columns the schema uses."""


class UnconvertibleValue(ValueError):
    """A SQLite value that the PostgreSQL column cannot hold unchanged."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column as the PostgreSQL schema declares it."""

    name: str
    pg_type: str  # information_schema.columns.data_type: "text", "bigint", "boolean", ...


@dataclass(frozen=True, slots=True)
class Table:
    """A table to move: its columns (PostgreSQL order) and its primary key (for ordering)."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def to_postgres(value: Any, column: Column) -> Any:
    """``value`` read from SQLite as the PostgreSQL column must receive it; raises if lossy."""
    if value is None:
        return None
    if column.pg_type in INTEGER_TYPES:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif column.pg_type == "boolean":
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif column.pg_type == "text":
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise UnconvertibleValue("bytes that are not UTF-8 text") from None
    else:
        raise UnconvertibleValue(f"no conversion to PostgreSQL type {column.pg_type!r}")
    raise UnconvertibleValue(f"{type(value).__name__} {value!r:.40} for a {column.pg_type} column")


def convert_row(table: Table, row: Sequence[Any]) -> tuple[Any, ...]:
    """One SQLite row (``table.column_names`` order) as PostgreSQL values; names what fails."""
    out = []
    for column, value in zip(table.columns, row, strict=True):
        try:
            out.append(to_postgres(value, column))
        except UnconvertibleValue as e:
            key = {c: row[table.column_names.index(c)] for c in table.key}
            raise UnconvertibleValue(f"{table.name}.{column.name} (row {key}): {e}") from None
    return tuple(out)


class TableDigest:
    """Row count and SHA-256 over rows in key order, in the normal form of :func:`to_postgres`."""

    def __init__(self) -> None:
        self.rows = 0
        self._hash = hashlib.sha256()

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.rows += 1
            self._hash.update(orjson.dumps(list(row)))
            self._hash.update(b"\n")

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison of the verification: what, the value on each side, equal or not."""

    name: str
    sqlite: str
    postgres: str
    ok: bool


def summary_table(checks: Sequence[Check]) -> str:
    """The checks as an aligned text table, mismatches marked, for the operator."""
    header = ("check", "sqlite", "postgres", "")
    rows = [header] + [(c.name, c.sqlite, c.postgres, "ok" if c.ok else "MISMATCH") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
        for r in rows
    ]
    bad = sum(1 for c in checks if not c.ok)
    lines.append(f"{len(checks)} checks, {bad} mismatched")
    return "\n".join(lines)
