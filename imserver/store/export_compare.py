"""Verifying a move from SQLite to PostgreSQL: the tables, then what clients would read.

Two levels, because they catch different mistakes. The table level (row
counts and content digests of every table, ``export_rows.TableDigest``)
proves the bytes arrived. The "sync compare" reads both stores through the
``Store`` interface, as the server does — every conversation's messages
paged with ``messages_after``, every user's ``conversations_of``, todo cards
and card changes, the audit head — and proves the PostgreSQL backend makes of
those bytes what SQLite made of them. Both run after an export, and alone
with ``--verify-only``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from imserver.store.export import (
    connect,
    identity_columns,
    open_exclusive,
    plan,
    postgres_digest,
    postgres_tables,
    sqlite_autoincrement,
    sqlite_digest,
)
from imserver.store.export_rows import Check, UnconvertibleValue
from imserver.store.migrations import SCHEMA_VERSION
from imserver.store.postgres import PostgresStore
from imserver.store.postgres.jobs import PgConn
from imserver.store.postgres.schema import applied_versions
from imserver.store.sqlite.store import SqliteStore

PAGE: Final = 500
"""Page size of the paged reads (as a syncing client pages)."""

T = TypeVar("T")
Pager = Callable[[Any, str, int], Awaitable[list[T]]]


async def verify_export(sqlite_path: Path, dsn: str) -> list[Check]:
    """Every check comparing the stopped SQLite store with the PostgreSQL ``dsn``."""
    src = open_exclusive(sqlite_path)  # refuses while a server holds the file
    try:
        async with connect(dsn) as dst:
            checks = await _schema_check(dst)
            if not checks[0].ok:
                return checks
            checks += await _table_checks(src, dst)
            checks += await _identity_checks(src, dst)
        users = [r[0] for r in src.execute("SELECT id FROM users ORDER BY id")]
        convs = [r[0] for r in src.execute("SELECT id FROM conversations ORDER BY id")]
    finally:
        src.close()
    return checks + await _store_checks(sqlite_path, dsn, users, convs)


async def _schema_check(dst: PgConn) -> list[Check]:
    versions = await applied_versions(dst)
    have = versions[-1] if versions else 0
    return [Check("schema version", str(SCHEMA_VERSION), str(have), have == SCHEMA_VERSION)]


async def _table_checks(src: sqlite3.Connection, dst: PgConn) -> list[Check]:
    try:
        tables = plan(src, await postgres_tables(dst))
    except UnconvertibleValue as e:
        return [Check(f"tables: {e}", "", "", False)]
    checks = []
    async with dst.transaction(isolation="repeatable_read", readonly=True):
        for table in tables:
            theirs = sqlite_digest(src, table)
            ours = await postgres_digest(dst, table)
            same = theirs.hexdigest == ours.hexdigest
            label = f"rows {table.name}" + ("" if same else " (values differ)")
            checks.append(Check(label, str(theirs.rows), str(ours.rows), same))
    return checks


async def _identity_checks(src: sqlite3.Connection, dst: PgConn) -> list[Check]:
    """Each PostgreSQL id counter at or past the highest id SQLite gave: no id given twice."""
    given = sqlite_autoincrement(src)
    checks = []
    for table, column in await identity_columns(dst):
        top = src.execute(f'SELECT coalesce(max("{column}"), 0) FROM "{table}"').fetchone()[0]
        last_given = max(int(top), given.get(table, 0))
        sequence = await dst.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, column)
        row = await dst.fetchrow(f"SELECT last_value, is_called FROM {sequence}")
        assert row is not None
        counter = int(row["last_value"]) if row["is_called"] else int(row["last_value"]) - 1
        checks.append(
            Check(f"last {table}.{column}", str(last_given), str(counter), counter >= last_given)
        )
    return checks


async def _store_checks(
    sqlite_path: Path, dsn: str, users: Sequence[str], convs: Sequence[str]
) -> list[Check]:
    lite = SqliteStore(sqlite_path)
    pg = PostgresStore(dsn, min_pool=1, max_pool=2)
    await lite.open()
    try:
        await pg.open()
        try:
            return await _compare_stores(lite, pg, users, convs)
        finally:
            await pg.close()
    finally:
        await lite.close()


async def _compare_stores(
    lite: SqliteStore, pg: PostgresStore, users: Sequence[str], convs: Sequence[str]
) -> list[Check]:
    messages = _Tally("sync: messages_after, every conversation")
    for conv in convs:
        messages.add(conv, *[await _messages(s, conv) for s in (lite, pg)])
    states = _Tally("sync: conversations_of, every user")
    todos = _Tally("sync: todo cards, every user")
    cards = _Tally("sync: card views (cards_changed_for), every user")
    for user in users:
        states.add(user, *[await s.conversations_of(user) for s in (lite, pg)])
        todos.add(user, *[list((await s.todo_cards(user, 100_000))[0]) for s in (lite, pg)])
        cards.add(user, *[await _card_changes(s, user) for s in (lite, pg)])
    return [t.check() for t in (messages, states, todos, cards)] + await _audit_checks(lite, pg)


async def _messages(store: SqliteStore | PostgresStore, conv: str) -> list[Any]:
    out: list[Any] = []
    while page := await store.messages_after(conv, out[-1].seq if out else 0, PAGE):
        out += page
    return out


async def _card_changes(store: SqliteStore | PostgresStore, user: str) -> list[Any]:
    out: list[Any] = []
    while page := await store.cards_changed_for(user, out[-1].gseq if out else 0, PAGE):
        out += page
    return out


async def _audit_checks(lite: SqliteStore, pg: PostgresStore) -> list[Check]:
    lite_head, pg_head = await lite.audit.last(), await pg.audit.last()

    def head(record: Any) -> str:
        return "empty" if record is None else f"{record.seq}:{record.hash[:16]}"

    lite_ok, pg_ok = await lite.audit.verify(), await pg.audit.verify()
    return [
        Check("audit chain head", head(lite_head), head(pg_head), lite_head == pg_head),
        Check(
            "audit chain verifies",
            "ok" if lite_ok.ok else f"broken at {lite_ok.first_bad_seq}",
            "ok" if pg_ok.ok else f"broken at {pg_ok.first_bad_seq}",
            lite_ok.ok and pg_ok.ok,
        ),
    ]


class _Tally:
    """Items compared for one check: how many on each side, which keys differed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lite = 0
        self.pg = 0
        self.differing: list[str] = []

    def add(self, key: str, lite: Sequence[Any], pg: Sequence[Any]) -> None:
        self.lite += len(lite)
        self.pg += len(pg)
        if list(lite) != list(pg):
            self.differing.append(key)

    def check(self) -> Check:
        name = self.name
        if self.differing:
            name += f" (differ: {', '.join(self.differing[:3])})"
        return Check(name, str(self.lite), str(self.pg), not self.differing)
