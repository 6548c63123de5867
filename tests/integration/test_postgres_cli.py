"""The operator commands on the PostgreSQL store, and three nodes starting on an empty schema.

Every command runs as ``python -m imserver ...`` in a subprocess with a config
pointing at a fresh schema of the real PostgreSQL; tampering is done as an
insider would, on a connection of its own (``session_replication_role =
replica`` silences the append-only triggers for that session only). The
first-start test starts three real ``serve`` processes (tests/cluster_support.py)
while it holds the migration lock, so all three are provably waiting at the
same moment when it lets go.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from imserver.audit.chain import seal
from imserver.store.migrations import SCHEMA_HISTORY, SCHEMA_VERSION
from imserver.store.postgres import PostgresStore
from imserver.store.postgres.schema import MIGRATION_LOCK
from imserver.store.postgres.schema_check import INVARIANTS
from imserver.store.records import NewMessage
from tests.cluster_support import Node, cluster_toml
from tests.postgres_support import PostgresUnavailable, applied_migrations, drop_schema, fresh_dsn
from tests.processes import REPO
from tests.redis_support import fresh_prefix, require_redis

T0 = 1_764_150_000_000
UNREACHABLE = "postgresql://imserver:sekret@127.0.0.1:1/imserver"
EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_STORE_REFUSED, EXIT_NO_DATABASE, EXIT_UNAVAILABLE = (
    1,
    2,
    3,
    4,
    5,
)


@dataclass(frozen=True, slots=True)
class Pg:
    """A fresh schema and a config file whose store is it."""

    dsn: str
    config: Path


def write_config(directory: Path, dsn: str) -> Path:
    config = directory / "pg.toml"
    config.write_text(
        f'[server]\ndata_dir = "{directory / "data"}"\nws_port = 0\nhttp_port = 0\n'
        f'[store]\nbackend = "postgres"\ndsn = "{dsn}"\npool_min_size = 1\npool_max_size = 2\n'
    )
    return config


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Pg]:
    try:
        dsn, schema = fresh_dsn()
    except PostgresUnavailable as e:
        pytest.fail(str(e))
    yield Pg(dsn, write_config(tmp_path, dsn))
    drop_schema(schema)


@pytest.fixture
async def store(pg: Pg) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg.dsn, min_pool=1, max_pool=3)
    await s.open()
    yield s
    await s.close()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m imserver --config CONFIG ARGS``, without the caller's IMSERVER_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSERVER_")}
    return subprocess.run(
        [sys.executable, "-m", "imserver", "--config", str(config), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def execute(dsn: str, *statements: str) -> None:
    """Run ``statements`` as an insider: the append-only triggers do not fire for this session."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def append_audit(store: PostgresStore, count: int) -> str:
    """``count`` records, appended concurrently (group-committed); the head's hash."""
    await asyncio.gather(
        *(store.audit.append(T0 + i, "admin", "test.note", f"t{i}", {"i": i}) for i in range(count))
    )
    last = await store.audit.last()
    assert last is not None and last.seq == count
    return last.hash


# --------------------------------------------------------------------------- audit verify / head


async def test_verify_and_head_read_a_chain_longer_than_a_page(
    pg: Pg, store: PostgresStore
) -> None:
    head = await append_audit(store, 2500)  # more than VERIFY_PAGE rows: several pages

    verified = await asyncio.to_thread(cli, pg.config, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == f"ok: 2500 records verified; head hash {head}"

    printed = await asyncio.to_thread(cli, pg.config, "audit", "head")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == f"2500:{head}"

    anchored = await asyncio.to_thread(cli, pg.config, "audit", "verify", "--head", f"2500:{head}")
    assert anchored.returncode == 0, anchored.stderr
    assert anchored.stdout.strip().endswith("; anchor 2500 matches")


async def test_a_row_edited_in_postgres_is_named_by_verify_and_blocks_head(
    pg: Pg, store: PostgresStore
) -> None:
    await append_audit(store, 1500)
    await execute(pg.dsn, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 1234")

    verified = await asyncio.to_thread(cli, pg.config, "audit", "verify")
    assert verified.returncode == EXIT_CHECK_FAILED, verified.stdout + verified.stderr
    assert verified.stdout.strip() == (
        "BROKEN at record 1234: hash mismatch (1233 records before it verified)"
    )
    printed = await asyncio.to_thread(cli, pg.config, "audit", "head")
    assert printed.returncode == EXIT_CHECK_FAILED
    assert printed.stdout == ""
    assert "BROKEN at record 1234: hash mismatch; not printing a head" in printed.stderr


async def test_an_anchor_catches_a_resealed_or_truncated_tail(pg: Pg, store: PostgresStore) -> None:
    head = await append_audit(store, 20)
    before_last = (await store.audit.records(18, 1))[0]
    forged = seal(before_last, T0, "mallory", "test.note", "t19", {"i": 19}, "sha256")
    await execute(
        pg.dsn,
        f"UPDATE audit_log SET actor = 'mallory', at = {T0}, hash = '{forged.hash}' WHERE seq = 20",
    )
    plain = await asyncio.to_thread(cli, pg.config, "audit", "verify")
    assert plain.returncode == 0, plain.stdout  # a resealed last record fits the chain...
    anchored = await asyncio.to_thread(cli, pg.config, "audit", "verify", "--head", f"20:{head}")
    assert anchored.returncode == EXIT_CHECK_FAILED  # ...but not the head noted earlier
    assert anchored.stdout.startswith("BROKEN at record 20: differs from the anchored head")

    await execute(pg.dsn, "DELETE FROM audit_log WHERE seq = 20")
    truncated = await asyncio.to_thread(cli, pg.config, "audit", "verify", "--head", f"20:{head}")
    assert truncated.returncode == EXIT_CHECK_FAILED
    assert truncated.stdout.startswith("BROKEN at record 20: anchored record missing")


# --------------------------------------------------------------------------- store check


async def seed_messages(store: PostgresStore) -> None:
    """A group with a system notice and three messages: something for the invariants to read."""
    await store.upsert_users([("alice", "Alice"), ("bob", "Bob")], T0)

    def message(sender: str, text: str, kind: str = "text") -> NewMessage:
        return NewMessage("g1", sender, "pc", kind, {"text": text}, T0)

    await store.create_group(
        "g1", "team", "alice", ["alice", "bob"], message("alice", "hi", "system")
    )
    for text in ("one", "two", "three"):
        await store.append_message(message("bob", text))


async def test_store_check_passes_then_names_a_broken_seq_invariant(
    pg: Pg, store: PostgresStore
) -> None:
    await seed_messages(store)
    good = await asyncio.to_thread(cli, pg.config, "store", "check")
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"schema version {SCHEMA_VERSION}" in good.stdout
    assert f"{len(INVARIANTS)} invariants hold" in good.stdout
    assert good.stdout.startswith("ok: 127.0.0.1:")

    await execute(pg.dsn, "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = 'g1'")
    bad = await asyncio.to_thread(cli, pg.config, "store", "check")
    assert bad.returncode == EXIT_CHECK_FAILED, bad.stdout + bad.stderr
    assert bad.stdout.startswith("BAD: store_damaged: 127.0.0.1:")
    assert "last_seq is not the seq of their newest message: g1 (last_seq 5, newest message 4)" in (
        bad.stdout
    )

    await execute(
        pg.dsn,
        "UPDATE conversations SET last_seq = 4 WHERE id = 'g1'",
        "DELETE FROM messages WHERE conv = 'g1' AND seq = 2",
        "INSERT INTO outbox (app_id, card_id, action_id, payload, state, next_at, created_at)"
        " VALUES ('app', 'no-such-card', 'a1', '{}', 'pending', 0, 0)",
    )
    both = await asyncio.to_thread(cli, pg.config, "store", "check")
    assert both.returncode == EXIT_CHECK_FAILED
    assert "without gaps: g1 (3 messages, seq 1 to 4)" in both.stdout
    assert "outbox callbacks of no stored card" in both.stdout and "no-such-card" in both.stdout
    assert "last_seq is not" not in both.stdout  # that one holds again


async def test_store_check_names_a_disabled_audit_trigger(pg: Pg, store: PostgresStore) -> None:
    await execute(pg.dsn, "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
    bad = await asyncio.to_thread(cli, pg.config, "store", "check")
    assert bad.returncode == EXIT_CHECK_FAILED
    assert "trigger audit_log_no_update missing" in bad.stdout


async def test_a_newer_schema_is_refused_by_check_verify_and_serve(
    pg: Pg, store: PostgresStore
) -> None:
    await execute(pg.dsn, "INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    check = await asyncio.to_thread(cli, pg.config, "store", "check")
    assert check.returncode == EXIT_CHECK_FAILED
    assert check.stdout.startswith("BAD: store_too_new: ")
    assert "schema versions [999]" in check.stdout

    for args in (("audit", "verify"), ("serve",)):
        refused = await asyncio.to_thread(cli, pg.config, *args)
        assert refused.returncode == EXIT_STORE_REFUSED, (args, refused.stderr)
        assert refused.stderr.startswith("error: store_too_new: 127.0.0.1:"), refused.stderr
        assert "Traceback" not in refused.stderr
    assert applied_migrations(pg.dsn) == [*(v for v, _ in SCHEMA_HISTORY), 999]  # untouched


async def test_an_empty_schema_is_no_database_yet(pg: Pg) -> None:
    for args in (("store", "check"), ("audit", "verify"), ("audit", "head")):
        out = await asyncio.to_thread(cli, pg.config, *args)
        assert out.returncode == EXIT_NO_DATABASE, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("error: no_database: no database yet at 127.0.0.1:")
    async with asyncpg.create_pool(pg.dsn, min_size=1, max_size=1) as pool:
        tables = await pool.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        )
    assert tables == 0  # the commands created nothing


def test_unreachable_postgres_exits_5_naming_the_host_and_the_fix(tmp_path: Path) -> None:
    config = write_config(tmp_path, UNREACHABLE)
    for args in (("store", "check"), ("audit", "verify"), ("audit", "head")):
        out = cli(config, *args)
        assert out.returncode == EXIT_UNAVAILABLE, (args, out.stderr)
        assert out.stderr.startswith(
            "error: store_unavailable: cannot use PostgreSQL at 127.0.0.1:1/imserver"
        )
        assert "Start PostgreSQL" in out.stderr and "sekret" not in out.stderr


def test_backup_and_restore_refuse_and_point_to_pg_dump(tmp_path: Path) -> None:
    config = write_config(tmp_path, UNREACHABLE)  # refused before any connection is tried
    target = tmp_path / "backup.db"
    backup = cli(config, "store", "backup", str(target))
    assert backup.returncode == EXIT_CONFIG, backup.stderr
    assert "pg_dump" in backup.stderr and "docs/cluster.md" in backup.stderr
    assert not target.exists()

    target.write_bytes(b"not used")
    restore = cli(config, "store", "restore", str(target))
    assert restore.returncode == EXIT_CONFIG, restore.stderr
    assert "pg_restore" in restore.stderr and "docs/cluster.md" in restore.stderr
    assert not (tmp_path / "data").exists()  # no SQLite store was created either


# --------------------------------------------------------------------------- concurrent first start


async def waiting_for_lock(conn: asyncpg.Connection, key: int) -> int:
    """How many sessions wait for the advisory lock ``key`` (a bigint below 2**32)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = 0 AND objid = $1 AND objsubid = 1",
        key,
    )
    return count


@pytest.mark.slow
@pytest.mark.parametrize(
    "isolation",
    ["read%20committed", "repeatable%20read"],
    ids=["read-committed", "repeatable-read"],
)
async def test_three_nodes_starting_at_once_migrate_an_empty_schema_once(
    tmp_path: Path, isolation: str
) -> None:
    """Also when the database's default isolation is REPEATABLE READ (the snapshot trap)."""
    dsn, schema = fresh_dsn()
    shared = cluster_toml(
        f"{dsn}&default_transaction_isolation={isolation}", require_redis(), fresh_prefix()
    )
    nodes = []
    for i in range(3):
        (tmp_path / f"node{i}").mkdir()
        nodes.append(Node(tmp_path / f"node{i}", shared))
    gate = await asyncpg.connect(dsn)
    try:
        async with gate.transaction():
            await gate.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            for node in nodes:
                node.start()
            for _ in range(600):  # all three reach the lock and wait there together
                if await waiting_for_lock(gate, MIGRATION_LOCK) == 3:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("\n".join(node.log_tail() for node in nodes))
        await asyncio.gather(*(node.wait_ready(timeout_s=60) for node in nodes))
        for node in nodes:
            health = await node.healthz()
            assert health["status"] == "ok", health
        assert applied_migrations(dsn) == [v for v, _ in SCHEMA_HISTORY]
        triggers = await gate.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('audit_log')"
        )
        assert triggers == 3
    finally:
        await gate.close()
        for node in nodes:
            node.stop()
        drop_schema(schema)
