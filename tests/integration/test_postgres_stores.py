"""The PostgreSQL store's own promises beyond the shared contract suite.

Start-up errors that name the fix, one schema history for both backends, the
audit log's append-only rules enforced by the database, and the group-commit
writer's isolation of a failing job — all against the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from imserver.audit.chain import GENESIS
from imserver.errors import StoreUnavailable
from imserver.store.migrations import SCHEMA_HISTORY
from imserver.store.postgres import PostgresStore
from imserver.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from imserver.store.records import AuditEntry, CardChange, NewCard, NewMessage
from imserver.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests.postgres_support import PostgresUnavailable, drop_schema, fresh_dsn

T0 = 1_764_150_000_000
REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://imserver:sekret@127.0.0.1:1/imserver"


@pytest.fixture
def dsn() -> Iterator[str]:
    try:
        url, schema = fresh_dsn()
    except PostgresUnavailable as e:
        pytest.fail(str(e))
    yield url
    drop_schema(schema)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(dsn, min_pool=1, max_pool=3)
    await s.open()
    yield s
    await s.close()


def test_both_backends_share_one_schema_history() -> None:
    history = list(SCHEMA_HISTORY)
    assert [(v, d) for v, d, _ in SQLITE_MIGRATIONS] == history
    assert [(v, d) for v, d, _ in PG_MIGRATIONS] == history


async def test_unreachable_postgres_names_the_host_and_the_fix() -> None:
    store = PostgresStore(UNREACHABLE)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    message = caught.value.message
    assert caught.value.code == "store_unavailable"
    assert "127.0.0.1:1/imserver" in message
    assert "IMSERVER_STORE_DSN" in message and "Start PostgreSQL" in message
    assert "sekret" not in message  # never the password
    await store.close()  # nothing was opened; closing is harmless


async def test_a_missing_database_is_reported_the_same_way(dsn: str) -> None:
    missing = dsn.split("?")[0].rsplit("/", 1)[0] + "/imserver_no_such_database"
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresStore(missing).open()
    assert "imserver_no_such_database" in caught.value.message
    assert "createdb" in caught.value.message


def test_serve_exits_with_code_5_and_one_line_when_postgres_is_unreachable(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "pg.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path}"\nws_port = 0\nhttp_port = 0\n'
        f'[store]\nbackend = "postgres"\ndsn = "{UNREACHABLE}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "imserver", "serve", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 5, out.stderr
    assert out.stderr.startswith("error: store_unavailable: cannot use PostgreSQL at 127.0.0.1:1")
    assert "Traceback" not in out.stderr and "sekret" not in out.stderr


async def test_reopening_applies_no_migration_twice(dsn: str) -> None:
    for _ in range(2):
        s = PostgresStore(dsn, min_pool=1, max_pool=2)
        await s.open()
        await s.close()
    conn = await asyncpg.connect(dsn)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    assert sorted(versions) == [v for v, _ in SCHEMA_HISTORY]


async def test_audit_log_refuses_update_delete_truncate_and_forged_inserts(
    store: PostgresStore, dsn: str
) -> None:
    first = await store.audit.append(T0, "admin", "test.note", "x", {"n": 1})
    conn = await asyncpg.connect(dsn)
    try:
        for statement in (
            "UPDATE audit_log SET actor = 'mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
        with pytest.raises(asyncpg.RaiseError, match="must extend the chain"):
            await conn.execute(
                "INSERT INTO audit_log VALUES (2, 0, 'm', 'a', 't', '{}', $1, $1, 'sha256')",
                GENESIS,  # not the head's hash
            )
    finally:
        await conn.close()
    result = await store.audit.verify()
    assert result.ok and result.checked == 1
    assert (await store.audit.last()) == first


async def test_a_lost_card_race_leaves_no_audit_record(store: PostgresStore) -> None:
    doc = {"out_track_id": "t1", "title": "x"}
    await store.create_card(NewCard("c1", "oa", doc, {"s": "open"}, ("a",), ("a", "b"), T0), [], [])

    def change(who: str) -> CardChange:
        return CardChange(
            "c1",
            1,
            doc,
            {"s": "done", "by": who},
            "ok",
            (),
            T0 + 1,
            audit=AuditEntry(who, "card.decide", "c1", {"by": who}),
        )

    results = await asyncio.gather(store.save_card(change("a")), store.save_card(change("b")))
    assert sum(r is not None for r in results) == 1
    records = await store.audit.records()
    assert len(records) == 1  # the loser's record rolled back with its change
    assert (await store.audit.verify()).ok


async def test_a_failing_job_undoes_only_itself_in_a_group_commit(store: PostgresStore) -> None:
    await store.upsert_users([("alice", "A"), ("bob", "B")], T0)

    def notice(conv: str) -> NewMessage:
        return NewMessage(conv, "alice", "d", "system", {"event": "group_created"}, T0)

    results = await asyncio.gather(
        store.create_group("g:one", "One", "alice", ["bob"], notice("g:one")),
        store.create_group("g:one", "Again", "alice", ["bob"], notice("g:one")),  # same id
        store.create_group("g:two", "Two", "alice", ["bob"], notice("g:two")),
        return_exceptions=True,
    )
    assert isinstance(results[1], asyncpg.UniqueViolationError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    one, two = await store.get_conversation("g:one"), await store.get_conversation("g:two")
    assert one is not None and (one.name, one.last_seq) == ("One", 1)
    assert two is not None and two.last_seq == 1
    batches, jobs = store.commit_stats
    assert jobs >= 3 and batches < jobs  # the three ran in a shared transaction


async def _terminate_other_connections(dsn: str) -> int:
    """What a PostgreSQL restart or failover does to a node's pooled connections."""
    conn = await asyncpg.connect(dsn)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return killed
    finally:
        await conn.close()


async def test_a_lost_connection_is_store_unavailable_and_the_next_request_works(
    store: PostgresStore, dsn: str
) -> None:
    await store.upsert_users([("alice", "A")], T0)
    assert await store.existing_users(["alice"]) == {"alice"}
    assert await _terminate_other_connections(dsn) >= 1

    async def attempt_read() -> object:
        try:
            return await store.existing_users(["alice"])
        except StoreUnavailable:
            return "unavailable"

    async def attempt_write() -> object:
        try:
            return await store.upsert_users([("bob", "B")], T0)
        except StoreUnavailable:
            return "unavailable"

    reads = [await attempt_read() for _ in range(3)]  # the pool had up to 3 connections
    writes = [await attempt_write() for _ in range(3)]
    assert reads[-1] == {"alice"}  # the pool replaced its dead connections
    assert writes[-1] == 1
    assert all(r in ("unavailable", {"alice"}) for r in reads)  # never a raw driver error
    assert all(w in ("unavailable", 1) for w in writes)
