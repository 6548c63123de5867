"""What may move from SQLite to PostgreSQL unchanged, and how both sides are compared."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imserver.store.export_rows import (
    Check,
    Column,
    Table,
    TableDigest,
    UnconvertibleValue,
    convert_row,
    summary_table,
    to_postgres,
)

TEXT, BIGINT, BOOL = Column("t", "text"), Column("n", "bigint"), Column("b", "boolean")
USERS = Table("users", (Column("id", "text"), Column("created_at", "bigint")), ("id",))


def test_values_that_fit_move_unchanged() -> None:
    assert to_postgres(b'{"text":"\xe4\xbd\xa0\xe5\xa5\xbd"}', TEXT) == '{"text":"你好"}'
    assert to_postgres("tok:v1:abc", TEXT) == "tok:v1:abc"
    assert to_postgres(2**62, BIGINT) == 2**62
    assert to_postgres(1, BOOL) is True and to_postgres(0, BOOL) is False
    assert to_postgres(None, BIGINT) is None


@pytest.mark.parametrize(
    ("value", "column"),
    [
        ("yesterday", BIGINT),  # SQLite keeps any type in any column; PostgreSQL does not
        (1.5, BIGINT),
        (True, BIGINT),
        (2, BOOL),
        ("1", BOOL),
        (b"\xff\xfe", TEXT),  # not UTF-8: cannot become text without loss
        (12, TEXT),
        (1, Column("x", "jsonb")),
    ],
)
def test_values_that_do_not_fit_are_refused(value: object, column: Column) -> None:
    with pytest.raises(UnconvertibleValue):
        to_postgres(value, column)


def test_a_refused_row_names_table_column_and_key() -> None:
    with pytest.raises(UnconvertibleValue, match=r"users\.created_at \(row \{'id': 'bob'\}\)"):
        convert_row(USERS, ("bob", "yesterday"))


@given(st.lists(st.tuples(st.text(), st.integers(-(2**63), 2**63 - 1)), max_size=20))
def test_sqlite_bytes_and_postgres_text_digest_alike(rows: list[tuple[str, int]]) -> None:
    sqlite_side, postgres_side = TableDigest(), TableDigest()
    sqlite_side.add(convert_row(USERS, (name.encode(), n)) for name, n in rows)
    postgres_side.add(rows)
    assert (sqlite_side.rows, sqlite_side.hexdigest) == (
        postgres_side.rows,
        postgres_side.hexdigest,
    )


def test_any_changed_value_changes_the_digest() -> None:
    a, b = TableDigest(), TableDigest()
    a.add([("alice", 1), ("bob", 2)])
    b.add([("alice", 1), ("bob", 3)])
    assert a.rows == b.rows and a.hexdigest != b.hexdigest


def test_summary_marks_mismatches_and_counts_them() -> None:
    table = summary_table(
        [Check("rows users", "5", "5", True), Check("rows messages", "17", "16", False)]
    )
    lines = table.splitlines()
    assert lines[1].endswith("ok") and lines[2].endswith("MISMATCH")
    assert lines[-1] == "2 checks, 1 mismatched"
