"""Issue #12 item 5: a damaged, empty or foreign database file is refused, never served.

Real files throughout: a store written by ``SqliteStore``, damaged with
random bytes the way a failing disk or a bad copy would, and ``python -m
imserver serve | store check | store backup`` run as real subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imserver.errors import StoreDamaged, StoreForeign, StoreNotSqlite, StoreTooNew
from imserver.store.records import NewMessage
from imserver.store.sqlite.file_check import check_store_file
from imserver.store.sqlite.store import SqliteStore
from imserver.tokens import TokenSigner, load_or_create_secret
from imserver_sdk import Client
from tests.integration.test_cli import cli_env, free_port, run_cli
from tests.processes import REPO, ServerProcess

EXIT_STORE_REFUSED = 3
EXIT_NO_DATABASE = 4
CONV = "dm:alice:bob"


async def write_store(path: Path, messages: int) -> None:
    """A real store with ``messages`` messages from alice to bob, closed cleanly."""
    store = SqliteStore(path, synchronous="NORMAL")
    await store.open()
    try:
        await store.upsert_users([("alice", "alice"), ("bob", "bob")], 1)
        if messages:
            await store.ensure_dm(CONV, "alice", "bob", 1)
        for i in range(messages):
            body = {"text": f"第 {i} 条 message"}
            await store.append_message(NewMessage(CONV, "alice", "pc", "text", body, 1000 + i))
    finally:
        await store.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage_middle(path: Path, size: int = 8192, seed: int = 12) -> None:
    """Overwrite ``size`` bytes in the middle of the file with random bytes."""
    length = path.stat().st_size
    assert length > 4 * size, "the store is too small to damage only its middle"
    with open(path, "r+b") as f:
        f.seek(length // 2 - size // 2)
        f.write(random.Random(seed).randbytes(size))


def config_for(tmp_path: Path, data: Path, extra: str = "") -> Path:
    cfg = tmp_path / "h3.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{data.as_posix()}"\nws_port = {free_port()}\n'
        f'http_port = {free_port()}\nuse_uvloop = false\nlog_level = "INFO"\n' + extra
    )
    return cfg


def serve_until_exit(cfg: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` that must exit by itself (a refused store); a server that starts times out."""
    return run_cli(["serve", "--config", str(cfg), *args], cwd, timeout=20)


def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], code: str, db: Path) -> None:
    assert proc.returncode == EXIT_STORE_REFUSED, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: {code}: {db}: "), errors[0]


# --------------------------------------------------------------------------- refused at start


async def test_damaged_store_stops_serve_with_exit_3_and_is_left_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    await write_store(db, 400)
    damage_middle(db)
    before = digest(db)
    proc = await asyncio.to_thread(serve_until_exit, config_for(tmp_path, data), tmp_path)
    assert_one_line_refusal(proc, "store_damaged", db)
    assert "restore the last good backup" in proc.stderr and "store check" in proc.stderr
    assert "listening" not in proc.stderr
    assert digest(db) == before  # the evidence (and any salvage) is not touched


async def test_zero_length_store_is_refused_and_init_starts_a_new_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    db.touch()
    cfg = config_for(tmp_path, data)
    proc = await asyncio.to_thread(serve_until_exit, cfg, tmp_path)
    assert_one_line_refusal(proc, "store_empty", db)
    assert "serve --init" in proc.stderr and "backup" in proc.stderr, proc.stderr
    assert db.stat().st_size == 0

    async with serving(cfg, tmp_path, "--init") as lines:
        assert any("--init: removed the empty file" in line for line in lines), lines
    assert check_store_file(db, check="full").schema_version > 0


async def test_init_does_not_touch_a_store_that_holds_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    await write_store(db, 400)
    damage_middle(db)
    before = digest(db)
    proc = await asyncio.to_thread(serve_until_exit, config_for(tmp_path, data), tmp_path, "--init")
    assert_one_line_refusal(proc, "store_damaged", db)
    assert digest(db) == before


def make_foreign(path: Path, kind: str) -> None:
    if kind == "text file":
        path.write_text("name,phone\n张三,13800001234\n" * 100)
        return
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        if kind == "another app's database":
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
        elif kind == "some of our tables, no schema_migrations":
            conn.execute("CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT, created_at INT)")
            conn.execute("CREATE TABLE messages (conv TEXT, seq INT, body BLOB)")
            conn.execute("INSERT INTO users VALUES ('alice', 'a', 1)")
        elif kind == "a Rails schema_migrations":
            conn.execute("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY)")
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
            conn.execute("INSERT INTO schema_migrations VALUES ('20240101000000')")
        else:  # pragma: no cover
            raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("text file", "store_not_sqlite"),
        ("another app's database", "store_foreign"),
        ("some of our tables, no schema_migrations", "store_foreign"),
        ("a Rails schema_migrations", "store_foreign"),
    ],
)
async def test_foreign_file_stops_serve_and_is_not_migrated(
    tmp_path: Path, kind: str, code: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    make_foreign(db, kind)
    before = digest(db)
    proc = await asyncio.to_thread(serve_until_exit, config_for(tmp_path, data), tmp_path)
    assert_one_line_refusal(proc, code, db)
    assert digest(db) == before


async def test_store_open_refuses_newer_schema_and_missing_tables(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    await write_store(newer, 3)
    with contextlib.closing(sqlite3.connect(newer)) as conn, conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    with pytest.raises(StoreTooNew, match="999"):
        await SqliteStore(newer).open()

    gutted = tmp_path / "gutted.db"
    await write_store(gutted, 3)
    with contextlib.closing(sqlite3.connect(gutted)) as conn, conn:
        conn.execute("DROP TABLE messages")
    with pytest.raises(StoreDamaged, match="messages"):
        await SqliteStore(gutted).open()


async def test_integrity_check_off_skips_only_the_page_check(tmp_path: Path) -> None:
    """``store.integrity_check = "off"`` is the operator's choice; header and schema still count."""
    db = tmp_path / "s.db"
    await write_store(db, 400)
    damage_middle(db)
    assert check_store_file(db, check="off").integrity == "skipped"
    with pytest.raises(StoreDamaged):
        check_store_file(db, check="quick")
    db.write_bytes(b"\0" * 8192)
    with pytest.raises(StoreNotSqlite):
        check_store_file(db, check="off")
    foreign = tmp_path / "f.db"
    make_foreign(foreign, "another app's database")
    with pytest.raises(StoreForeign):
        check_store_file(foreign, check="off")


async def test_a_new_store_never_exists_half_made(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "imserver.db"
    store = SqliteStore(db)
    await store.open()
    await store.close()
    assert sorted(p.name for p in db.parent.iterdir() if ".creating" in p.name) == []
    assert check_store_file(db, check="full").schema_version > 0


# --------------------------------------------------------------------------- store check


async def test_store_check_reports_ok_damaged_and_missing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    cfg = config_for(tmp_path, data)
    missing = await asyncio.to_thread(run_cli, ["store", "check", "--config", str(cfg)], tmp_path)
    assert missing.returncode == EXIT_NO_DATABASE, missing.stdout + missing.stderr
    assert f"no database yet at {db} (start the server once)" in missing.stderr
    assert not db.exists()

    await write_store(db, 400)
    ok = await asyncio.to_thread(run_cli, ["store", "check", "--config", str(cfg)], tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"ok: {db}: integrity_check ok"), ok.stdout

    damage_middle(db)
    bad = await asyncio.to_thread(run_cli, ["store", "check", str(db)], tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stdout.startswith(f"BAD: store_damaged: {db}: "), bad.stdout
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- store backup


@contextlib.asynccontextmanager
async def serving(cfg: Path, cwd: Path, *args: str) -> AsyncIterator[list[str]]:
    """``serve`` with extra ``args``, until it logs "listening"; SIGTERM on leaving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imserver",
        "serve",
        "--config",
        str(cfg),
        *args,
        cwd=cwd,
        env=cli_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while not any("listening" in line for line in lines):
                raw = await proc.stderr.readline()
                if not raw:
                    pytest.fail("serve exited:\n" + "".join(lines))
                lines.append(raw.decode(errors="replace"))
        yield lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


async def test_backup_while_the_server_writes_holds_every_acked_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    await write_store(data / "imserver.db", 0)  # users alice and bob
    server = ServerProcess(data)
    server.start()
    backup = tmp_path / "backup.db"
    acked: list[int] = []
    try:
        await server.wait_ready()
        signer = TokenSigner(load_or_create_secret("", data))
        alice = Client(server.url, signer.mint("alice", "pc", 600), reconnect=False)
        await alice.connect()
        stop = asyncio.Event()
        progress = asyncio.Condition()

        async def keep_sending() -> None:
            i = 0
            while not stop.is_set():
                ack = await alice.send_text(f"消息 {i}", to="bob")
                async with progress:
                    acked.append(ack.seq)
                    progress.notify_all()
                i += 1

        async def until_acked(count: int) -> None:
            async with progress:
                await progress.wait_for(lambda: len(acked) >= count)

        sender = asyncio.create_task(keep_sending())
        try:
            await until_acked(100)
            acked_before = list(acked)
            made = await asyncio.to_thread(
                run_cli, ["store", "backup", str(backup), "--config", str(server.config_path)], REPO
            )
            during = len(acked) - len(acked_before)
            await until_acked(len(acked_before) + during + 50)  # the server kept going
        finally:
            stop.set()
            await sender
            await alice.close()
    finally:
        server.stop()
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.startswith(f"ok: backup of {data / 'imserver.db'} written to {backup}")

    report = check_store_file(backup, check="full")
    assert report.integrity == "ok" and report.schema_version > 0
    with contextlib.closing(sqlite3.connect(backup)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        rows = conn.execute("SELECT conv, seq FROM messages ORDER BY seq").fetchall()
    assert len({conv for conv, _ in rows}) == 1  # alice's one DM with bob
    seqs = [seq for _, seq in rows]
    assert seqs == list(range(1, len(seqs) + 1))  # one consistent snapshot: no holes
    assert set(acked_before) <= set(seqs)  # everything acked before the backup started
    assert len(seqs) < len(acked)  # and it is a snapshot, not the final state
    names = await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()])
    assert not [name for name in names if ".partial" in name]

    again = await asyncio.to_thread(
        run_cli, ["store", "backup", str(backup), "--config", str(server.config_path)], REPO
    )
    assert again.returncode == 2 and "already exists" in again.stderr, again.stderr


async def test_backup_of_a_damaged_store_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    await write_store(db, 400)
    damage_middle(db)
    cfg = config_for(tmp_path, data)
    backup = tmp_path / "b.db"
    proc = await asyncio.to_thread(
        run_cli, ["store", "backup", str(backup), "--config", str(cfg)], tmp_path
    )
    assert proc.returncode == EXIT_STORE_REFUSED, proc.stdout + proc.stderr
    assert "store_damaged" in proc.stderr and "Traceback" not in proc.stderr
    names = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert names == ["data", "h3.toml"]


# --------------------------------------------------------------------------- store restore


async def test_restore_replaces_a_damaged_store_and_keeps_it_aside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    await write_store(db, 400)
    cfg = config_for(tmp_path, data)
    backup = tmp_path / "good.db"
    made = await asyncio.to_thread(
        run_cli, ["store", "backup", str(backup), "--config", str(cfg)], tmp_path
    )
    assert made.returncode == 0, made.stdout + made.stderr
    damage_middle(db)
    damaged = digest(db)

    restored = await asyncio.to_thread(
        run_cli, ["store", "restore", str(backup), "--config", str(cfg)], tmp_path
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert restored.stdout.startswith(f"ok: restored {backup} to {db}"), restored.stdout
    aside = [
        p for p in await asyncio.to_thread(lambda: list(data.iterdir())) if ".replaced-" in p.name
    ]
    assert len(aside) == 1 and digest(aside[0]) == damaged
    assert check_store_file(db, check="full").integrity == "ok"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (400,)

    bad = await asyncio.to_thread(
        run_cli, ["store", "restore", str(aside[0]), "--config", str(cfg)], tmp_path
    )
    assert bad.returncode == EXIT_STORE_REFUSED and "store_damaged" in bad.stderr, bad.stderr


async def test_restore_is_refused_while_the_server_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    await write_store(db, 10)
    backup = tmp_path / "b.db"
    server = ServerProcess(data)
    server.start()
    try:
        await server.wait_ready()
        made = await asyncio.to_thread(
            run_cli, ["store", "backup", str(backup), "--config", str(server.config_path)], REPO
        )
        assert made.returncode == 0, made.stdout + made.stderr
        refused = await asyncio.to_thread(
            run_cli, ["store", "restore", str(backup), "--config", str(server.config_path)], REPO
        )
    finally:
        server.stop()
    assert_one_line_refusal(refused, "store_in_use", db)
    assert "stop the server" in refused.stderr
    names = await asyncio.to_thread(lambda: sorted(p.name for p in data.iterdir()))
    assert not [n for n in names if ".replaced-" in n or ".restoring-" in n], names
