"""SqliteAuditLog on a real SQLite file, run through the store's writer/reader threads.

The harness mirrors SqliteStore: one writer ``SqliteThread`` with group commit
(batch > 1; each job in its own savepoint) and one query-only reader, both in
WAL mode. Tampering is done the way an insider would: a plain ``sqlite3``
connection to the same file.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imserver.audit import GENESIS, AuditRecord, verify_chain
from imserver.store.sqlite.audit import SCHEMA_SQL, SqliteAuditLog, create_schema, verify_database
from imserver.store.sqlite.store import SqliteStore
from imserver.store.sqlite.worker import SqliteThread

T0 = 1_764_150_000_000


class Harness:
    """An audit log on ``path`` with store-like writer and reader threads."""

    def __init__(self, path: Path, *, algorithm: str = "sha256", batch: int = 64) -> None:
        self.path = path
        self.writer = SqliteThread("audit-writer", self._connect_writer, batch=batch, write=True)
        self.reader = SqliteThread("audit-reader", self._connect_reader, batch=8, write=False)
        self.log = SqliteAuditLog(self.writer.run, self.reader.run, algorithm=algorithm)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA_SQL)
        # A business table, to show audit records commit with the change they describe.
        conn.execute("CREATE TABLE IF NOT EXISTS actions (id INTEGER PRIMARY KEY, what TEXT)")
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        return conn

    def start(self) -> None:
        self.writer.start()
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()
        self.writer.stop()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path / "audit.sqlite3")
    harness.start()
    yield harness
    harness.stop()


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, as an insider with file access would use."""
    return sqlite3.connect(path, isolation_level=None)


async def fill(h: Harness, n: int) -> list[AuditRecord]:
    return [
        await h.log.append(T0 + i, "admin", "user.disable", f"user:u{i}", {"i": i})
        for i in range(n)
    ]


# -- appending -----------------------------------------------------------------


async def test_thousand_concurrent_appends_form_one_gapless_chain(h: Harness) -> None:
    records = await asyncio.gather(
        *(
            h.log.append(
                T0 + i,
                f"admin{i % 7}",
                "card.decide",
                f"card:{i}",
                {"i": i, "意见": "同意"},
                "sm3" if i % 2 else None,
            )
            for i in range(1000)
        )
    )
    assert sorted(r.seq for r in records) == list(range(1, 1001))
    assert {r.algorithm for r in records} == {"sha256", "sm3"}
    batches, jobs = h.writer.batches, h.writer.jobs
    assert jobs == 1000 and batches < jobs  # appends really were group-committed

    result = await h.log.verify()
    assert (result.ok, result.checked, result.first_bad_seq, result.reason) == (
        True,
        1000,
        None,
        None,
    )
    stored = await h.log.records(limit=2000)
    assert [r.seq for r in stored] == list(range(1, 1001))
    assert stored == sorted(records, key=lambda r: r.seq)  # read back equal to what was sealed
    assert result.head_hash == stored[-1].hash == (await h.log.last() or stored[0]).hash
    assert verify_database(h.path) == result


async def test_records_pages_in_seq_order(h: Harness) -> None:
    await fill(h, 25)
    page1 = await h.log.records(limit=10)
    page2 = await h.log.records(after_seq=page1[-1].seq, limit=10)
    page3 = await h.log.records(after_seq=page2[-1].seq, limit=10)
    assert [r.seq for r in page1 + page2 + page3] == list(range(1, 26))
    assert await h.log.records(after_seq=25) == []


async def test_empty_log_verifies(h: Harness) -> None:
    result = await h.log.verify()
    assert (result.ok, result.checked, result.head_hash) == (True, 0, GENESIS)
    assert await h.log.last() is None


async def test_algorithm_switch_mid_chain(h: Harness) -> None:
    await fill(h, 5)
    h.log.algorithm = "sm3"
    await fill(h, 5)
    stored = await h.log.records()
    assert [r.algorithm for r in stored] == ["sha256"] * 5 + ["sm3"] * 5
    assert (await h.log.verify()).ok


async def test_chain_continues_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    first = Harness(path)
    first.start()
    await fill(first, 3)
    first.stop()
    second = Harness(path, algorithm="sm3")
    second.start()
    try:
        record = await second.log.append(T0, "admin", "org.sync", "org", {})
        assert record.seq == 4
        assert (await second.log.verify()).checked == 4
    finally:
        second.stop()


async def test_failing_job_rolls_back_its_append(h: Harness) -> None:
    """An action that fails after logging leaves neither the action nor its record."""
    await fill(h, 2)

    def job(conn: sqlite3.Connection, i: int, fail: bool) -> AuditRecord:
        conn.execute("INSERT INTO actions (what) VALUES (?)", (f"action {i}",))
        record = h.log.append_in(conn, T0 + i, "admin", "user.disable", f"user:{i}", {"i": i})
        if fail:
            raise RuntimeError("the action failed after it was logged")
        return record

    with pytest.raises(RuntimeError, match="failed after"):
        await h.writer.run(lambda conn: job(conn, 100, True))
    assert (await h.log.append(T0, "admin", "x", "y", {})).seq == 3

    # Successes and failures mixed in the same group-committed batches.
    outcomes = await asyncio.gather(
        *(h.writer.run(functools.partial(job, i=i, fail=i % 3 == 0)) for i in range(60)),
        return_exceptions=True,
    )
    ok = [o for o in outcomes if isinstance(o, AuditRecord)]
    assert len(ok) == 40 and all(isinstance(o, RuntimeError) for o in outcomes if o not in ok)
    assert sorted(r.seq for r in ok) == list(range(4, 44))
    result = await h.log.verify()
    assert result.ok and result.checked == 43
    with raw(h.path) as conn:
        assert conn.execute("SELECT count(*) FROM actions").fetchone() == (40,)


async def test_append_in_opens_its_own_transaction_when_none_is_open(h: Harness) -> None:
    await fill(h, 2)
    isolations: tuple[Any, ...] = (None, "")
    for isolation in isolations:  # autocommit and the sqlite3 module's legacy mode
        conn = sqlite3.connect(h.path, isolation_level=isolation)
        try:
            assert not conn.in_transaction
            record = h.log.append_in(conn, T0, "cli", "audit.note", "", {"isolation": isolation})
            assert not conn.in_transaction  # committed
        finally:
            conn.close()
        assert (await h.log.last()) == record
    assert (await h.log.verify()).checked == 4


async def test_works_inside_the_real_store(tmp_path: Path) -> None:
    """Wired as intended: table created by a store write job, log on the store's runners."""
    store = SqliteStore(tmp_path / "store.sqlite3", group_commit_max=64)
    await store.open()
    try:
        await store._write(create_schema)
        log = SqliteAuditLog(store._write, store._read, algorithm="sm3")
        await asyncio.gather(
            *(log.append(T0 + i, "admin", "revoke", f"d{i}", {}) for i in range(50))
        )
        result = await log.verify()
        assert result.ok and result.checked == 50
    finally:
        await store.close()
    assert verify_database(tmp_path / "store.sqlite3").checked == 50


# -- append-only at the database level -------------------------------------------


async def test_update_and_delete_are_refused(h: Harness) -> None:
    await fill(h, 5)
    with raw(h.path) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only: UPDATE refused"):
            conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
        with pytest.raises(sqlite3.IntegrityError, match="append-only: DELETE refused"):
            conn.execute("DELETE FROM audit_log WHERE seq = 5")
        with pytest.raises(sqlite3.IntegrityError, match="append-only: DELETE refused"):
            conn.execute("DELETE FROM audit_log")
        # An upsert is caught by the insert trigger before it can become an update.
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(
                "INSERT INTO audit_log SELECT * FROM audit_log WHERE seq = 1"
                " ON CONFLICT (seq) DO UPDATE SET actor = 'mallory'"
            )
    stored = await h.log.records()
    assert [r.seq for r in stored] == [1, 2, 3, 4, 5] and {r.actor for r in stored} == {"admin"}
    assert (await h.log.verify()).ok


async def test_inserts_that_do_not_extend_the_chain_are_refused(h: Harness) -> None:
    records = await fill(h, 3)
    row = ("a", "b", "c", "{}", "sha256")
    insert = (
        "INSERT {how} INTO audit_log (seq, at, actor, action, target, details, prev_hash,"
        " hash, algorithm) VALUES (?, 0, ?, ?, ?, ?, ?, 'x', ?)"
    )
    with raw(h.path) as conn:
        # REPLACE deletes the old row without firing the delete trigger: blocked on insert.
        for seq, prev_hash in ((2, records[0].hash), (5, records[2].hash), (4, GENESIS)):
            for how in ("", "OR REPLACE", "OR IGNORE"):
                with pytest.raises(sqlite3.IntegrityError, match="INSERT must extend the chain"):
                    conn.execute(insert.format(how=how), (seq, *row[:4], prev_hash, row[4]))
    assert (await h.log.verify()).checked == 3


# -- tampering is found ------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("details", '{"i":0}'),
        ("details", "not json"),
        ("actor", "mallory"),
        ("at", 0),
        ("hash", "0" * 64),
        ("algorithm", "sm3"),
    ],
)
async def test_edit_behind_the_triggers_back_is_named(h: Harness, column: str, value: Any) -> None:
    await fill(h, 40)
    with raw(h.path) as conn:
        conn.execute("DROP TRIGGER audit_log_no_update")
        conn.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = 17", (value,))
    result = await h.log.verify()
    assert (result.ok, result.first_bad_seq, result.reason, result.checked) == (
        False,
        17,
        "hash mismatch",
        16,
    )
    assert verify_database(h.path) == result


async def test_deleted_row_is_named_as_a_gap(h: Harness) -> None:
    await fill(h, 40)
    with raw(h.path) as conn:
        conn.execute("DROP TRIGGER audit_log_no_delete")
        conn.execute("DELETE FROM audit_log WHERE seq = 23")
    result = await h.log.verify()
    assert (result.first_bad_seq, result.reason) == (23, "missing record (gap)")


async def test_resealed_row_breaks_the_next_link(h: Harness) -> None:
    """A forger who recomputes the edited record's hash is caught at its successor."""
    records = await fill(h, 10)
    from imserver.audit.chain import seal

    forged = seal(records[3], T0, "mallory", "nothing", "nobody", {}, "sha256")
    with raw(h.path) as conn:
        conn.execute("DROP TRIGGER audit_log_no_update")
        conn.execute(
            "UPDATE audit_log SET actor = ?, action = ?, target = ?, details = '{}', at = ?,"
            " hash = ? WHERE seq = 5",
            (forged.actor, forged.action, forged.target, forged.at, forged.hash),
        )
    result = await h.log.verify()
    assert (result.first_bad_seq, result.reason) == (6, "broken link")


def test_verify_database_is_read_only(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    with pytest.raises(sqlite3.OperationalError):
        verify_database(missing)
    assert not missing.exists()
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        verify_database(empty)


def test_iter_all_streams_a_consistent_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    with raw(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        create_schema(conn)
    log = SqliteAuditLog(_unused, _unused)
    with raw(path) as writer, raw(path) as reader:
        for i in range(10):
            log.append_in(writer, T0 + i, "a", "b", "c", {"i": i})
        stream = log.iter_all(reader)
        first = next(stream)
        log.append_in(writer, T0, "a", "b", "c", {"late": True})  # after the read began
        rest = list(stream)
        assert [r.seq for r in [first, *rest]] == list(range(1, 11))
        assert verify_chain(log.iter_all(reader)).checked == 11


async def _unused(fn: Any) -> Any:
    raise AssertionError("not used")
