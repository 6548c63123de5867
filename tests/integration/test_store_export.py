"""Moving an embedded deployment into PostgreSQL: ``python -m imserver store export-postgres``.

A real server on SQLite is driven through its real APIs (1:1 and group
messages, a recall, read cursors, an approval card whose callback is still
pending in the outbox, a DING, card deadline timers, a directory sync with
encrypted phone numbers, identity refresh tokens, an archived group, audit
records), stopped, exported by the real command line into a fresh PostgreSQL
schema and verified; then a server on PostgreSQL with the same data dir
(same keys) must hand a syncing client exactly the same history and give the
next message the next seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from imserver.config import Config
from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, BusinessStub, approval_card, business
from tests.postgres_support import drop_schema, fresh_dsn, run_blocking
from tests.support import Harness, RawClient, make_test_config, start_harness, stop_harness

ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "imserver")
EXIT_CHECK_FAILED, EXIT_REFUSED = 1, 3

UNITS = [
    {"op": "unit", "id": "jx", "name": "江西省", "level": "province"},
    {"op": "unit", "id": "nc", "name": "南昌市", "level": "city", "parent": "jx"},
]
MEMBERS = [
    {
        "op": "member",
        "user": "gov",
        "name": "省长",
        "units": [{"unit": "jx", "title": "省长", "leader": True}],
        "profile": {"phone": "13812341234", "email": "gov@jx.gov.cn"},
    },
    {
        "op": "member",
        "user": "mayor",
        "name": "南昌市长",
        "units": [{"unit": "nc", "title": "市长", "leader": True}],
        "profile": {"phone": "13912345678"},
    },
]


@pytest.fixture
def target() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (as the DSN's search_path), dropped afterwards."""
    dsn, schema = fresh_dsn()
    yield dsn
    drop_schema(schema)


@pytest.fixture
async def stub() -> AsyncIterator[BusinessStub]:
    s = BusinessStub()
    await s.start()
    yield s
    await s.stop()


def sqlite_config(data_dir: Path) -> Config:
    # A long callback backoff: the failed callback stays pending in the outbox.
    return make_test_config(
        data_dir,
        {
            "store": {"backend": "sqlite"},
            "auth": {"admin_api_key": ADMIN_KEY},
            "cards": {
                "callback_timeout_s": 0.5,
                "callback_backoff_initial_s": 600.0,
                "callback_backoff_max_s": 600.0,
            },
        },
    )


def postgres_config(data_dir: Path, dsn: str) -> Config:
    return make_test_config(
        data_dir,
        {
            "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
            "auth": {"admin_api_key": ADMIN_KEY},
            "cards": {
                "callback_timeout_s": 0.5,
                "callback_backoff_initial_s": 600.0,
                "callback_backoff_max_s": 600.0,
            },
        },
    )


def export_cli(data_dir: Path, dsn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process, on the SQLite store in ``data_dir``."""
    config = data_dir.parent / f"{data_dir.name}.toml"
    config.write_text(f'[server]\ndata_dir = "{data_dir}"\n')
    return subprocess.run(
        [*CLI, "--config", str(config), "store", "export-postgres", "--dsn", dsn, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def admin(
    server: Harness, method: str, path: str, *, json: Any = None, data: bytes | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if data is not None:
        headers["Content-Type"] = "application/x-ndjson"
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, server.world.http_url + path, headers=headers, json=json, data=data) as r,
    ):
        body = await r.read()
        return r.status, orjson.loads(body) if body else {}


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def populate(server: Harness, stub: BusinessStub) -> None:
    """Everything a deployment holds, made through the server's own APIs."""
    status, body = await admin(
        server,
        "POST",
        "/admin/v1/directory/sync?mode=full",
        data=b"".join(orjson.dumps(line) + b"\n" for line in [*UNITS, *MEMBERS]),
    )
    assert status == 200, body
    alice = await server.client("alice")
    bob = await server.client("bob")
    carol = await server.client("carol")
    for i in range(7):
        await alice.send_text(f"第{i}条", to="bob")
    group = (await alice.create_group("防汛", ["bob", "carol", "gov"]))["conv"]
    await bob.send_text("收到", conv=group)
    recalled = await bob.send_text("发错了", conv=group)
    await bob.recall(group, recalled.seq)
    urgent = await alice.send_text("紧急：18:00 前确认到岗", conv=group, urgent=True)
    await carol.confirm_ding(group, urgent.seq)
    await carol.read(group, urgent.seq)

    oa: BusinessClient = await business(server, stub)
    stub.script = ["500"]  # the first callback fails; the retry is 10 minutes away
    due = int((time.time() + 3600) * 1000)  # reminder and overdue timers, far ahead
    pushed = await oa.push_card(
        approval_card("leave-1", ["bob", "carol"], due_at=due, escalate_to="alice"),
        users=["bob", "carol"],
    )
    await bob.request(
        "card.act", card_id=pushed["card_id"], action="approve", action_id=uuid.uuid4().hex
    )
    await wait_until(lambda: _one_failed_hit(stub))
    await oa.push_card(approval_card("leave-2", ["carol"]), users=["carol"])
    many = [f"m{i:03d}" for i in range(100)]  # cards.broadcast_min_holders: one b: message
    await server.users(*many)
    await oa.push_card(approval_card("circular", ["m000"]), users=many)
    await oa.close()

    status, body = await admin(
        server,
        "POST",
        "/admin/v1/apps",
        json={
            "app_id": "idp",
            "secret": stub.secret,
            "callback_url": stub.url,
            "scope": ["*"],
            "permissions": ["tokens"],
        },
    )
    assert status == 201, body
    idp = BusinessClient(server.world.http_url, "idp", stub.secret)
    pair = await idp.request("POST", "/api/v1/apps/tokens", {"user": "bob", "device": "phone"})
    assert pair["refresh_token"].startswith("rt_")
    await idp.close()

    old = (await alice.create_group("旧群", ["bob"]))["conv"]
    status, body = await admin(
        server, "POST", "/admin/v1/governance/archive", json={"conv": old, "reason": "僵尸群"}
    )
    assert status == 200 and body["changed"] is True, body


async def _one_failed_hit(stub: BusinessStub) -> bool:
    return stub.hits >= 1


def table_counts(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def postgres_counts(dsn: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        conn = await asyncpg.connect(dsn)
        try:
            names = await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
            return {r[0]: await conn.fetchval(f'SELECT count(*) FROM "{r[0]}"') for r in names}
        finally:
            await conn.close()

    return run_blocking(read())


async def full_sync(raw: RawClient) -> dict[str, list[dict[str, Any]]]:
    """Everything a client with nothing sees on ``sync``, paged to the end, per conversation."""
    held: dict[str, list[dict[str, Any]]] = {}
    while True:
        since = {conv: msgs[-1]["seq"] for conv, msgs in held.items() if msgs}
        answer = await raw.request("sync", since=since)
        assert answer["type"] == "result", answer
        more = answer["data"]["more"]
        for page in answer["data"]["conversations"]:
            held.setdefault(page["conv"], []).extend(page["messages"])
            more = more or page["more"]
        if not more:
            return held


async def synced_by(server: Harness, users: list[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for user in users:
        raw = await server.raw(user, device="fresh")
        seen[user] = await full_sync(raw)
        held = {conv: msgs[-1]["seq"] for conv, msgs in seen[user].items() if msgs}
        cards = await raw.request("sync", since=held, cards_since=0)
        seen[f"{user}:cards"] = cards["data"]["cards"]
        await raw.close()
    return seen


async def test_export_moves_everything_and_a_postgres_server_carries_on(
    tmp_path: Path, target: str, stub: BusinessStub
) -> None:
    data_dir = tmp_path / "data"
    lite = await start_harness(sqlite_config(data_dir))
    await populate(lite, stub)
    users = ["alice", "bob", "carol", "gov"]
    before = await synced_by(lite, users)
    await stop_harness(lite)
    sqlite_file = lite.world.config.sqlite_file
    counts = table_counts(sqlite_file)
    for table in ("outbox", "timers", "dings", "refresh_tokens", "units", "audit_log"):
        assert counts[table] >= 1, (table, counts)
    with contextlib.closing(sqlite3.connect(sqlite_file)) as conn:
        pending = conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()
        profile = conn.execute("SELECT profile FROM users WHERE id = 'gov'").fetchone()[0]
        max_gseq = conn.execute("SELECT value FROM counters WHERE name = 'card_gseq'").fetchone()[0]
    assert pending == (1,)
    assert b"13812341234" not in bytes(profile)  # sealed at rest: copied as the token it is

    done = export_cli(data_dir, target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 mismatched" in done.stdout and "MISMATCH" not in done.stdout
    for check in ("sync: messages_after", "sync: todo cards", "last outbox.id", "audit chain"):
        assert check in done.stdout
    moved = postgres_counts(target)
    for table, count in counts.items():
        assert moved[table] == count, table
    again = export_cli(data_dir, target, "--verify-only")
    assert again.returncode == 0, again.stdout + again.stderr

    pg = await start_harness(postgres_config(data_dir, target))
    try:
        assert await synced_by(pg, users) == before
        assert (await pg.world.store.audit.verify()).ok
        province = await pg.world.store.get_unit("jx")
        assert province is not None and province.name == "江西省"
        alice = await pg.client("alice")
        dm = next(c for c in before["alice"] if c.startswith("dm:"))
        ack = await alice.send_text("迁移后第一条", to="bob")
        assert (ack.conv, ack.seq) == (dm, before["alice"][dm][-1]["seq"] + 1)
        # The card counter goes on from where SQLite left it: no cursor goes backwards.
        oa = BusinessClient(pg.world.http_url, stub.app_id, stub.secret)
        pushed = await oa.push_card(approval_card("after-move", ["carol"]), users=["carol"])
        await oa.close()
        card = await pg.world.store.get_card(pushed["card_id"])
        assert card is not None and card.gseq == max_gseq + 1
    finally:
        await stop_harness(pg)


async def test_export_into_a_target_with_data_changes_nothing(tmp_path: Path, target: str) -> None:
    data_dir = tmp_path / "data"
    lite = await start_harness(sqlite_config(data_dir))
    await lite.users("bob")
    alice = await lite.client("alice")
    await alice.send_text("你好", to="bob")
    await stop_harness(lite)

    other = await start_harness(postgres_config(tmp_path / "other", target))
    await other.users("someone")
    await stop_harness(other)
    before = postgres_counts(target)

    refused = export_cli(data_dir, target)
    assert refused.returncode == EXIT_REFUSED, refused.stdout + refused.stderr
    assert "export_refused" in refused.stderr and "already holds data" in refused.stderr
    assert postgres_counts(target) == before


async def test_export_refuses_while_a_server_holds_the_file(tmp_path: Path, target: str) -> None:
    data_dir = tmp_path / "data"
    lite = await start_harness(sqlite_config(data_dir))
    try:
        await lite.users("bob")
        alice = await lite.client("alice")
        await alice.send_text("你好", to="bob")
        refused = await asyncio.to_thread(export_cli, data_dir, target)
    finally:
        await stop_harness(lite)
    assert refused.returncode == EXIT_REFUSED, refused.stdout + refused.stderr
    assert "store_in_use" in refused.stderr and "stop the server" in refused.stderr
    assert postgres_counts(target) == {}  # not even the schema was created


async def test_a_failing_copy_leaves_the_target_empty(tmp_path: Path, target: str) -> None:
    """A value PostgreSQL cannot hold unchanged stops the export mid-copy; nothing stays."""
    data_dir = tmp_path / "data"
    lite = await start_harness(sqlite_config(data_dir))
    await lite.users("bob")
    alice = await lite.client("alice")
    await alice.send_text("你好", to="bob")
    await stop_harness(lite)
    with contextlib.closing(sqlite3.connect(lite.world.config.sqlite_file)) as conn:
        conn.execute(  # SQLite keeps any type: PostgreSQL cannot
            "UPDATE users SET created_at = 'yesterday' WHERE id = 'bob'"
        )
        conn.commit()

    failed = export_cli(data_dir, target)
    assert failed.returncode == EXIT_REFUSED, failed.stdout + failed.stderr
    assert "users.created_at" in failed.stderr and "nothing was written" in failed.stderr
    assert postgres_counts(target) == {}


async def test_verify_only_reports_a_difference(tmp_path: Path, target: str) -> None:
    data_dir = tmp_path / "data"
    lite = await start_harness(sqlite_config(data_dir))
    await lite.users("bob")
    alice = await lite.client("alice")
    await alice.send_text("你好", to="bob")
    await stop_harness(lite)
    assert export_cli(data_dir, target).returncode == 0
    with contextlib.closing(sqlite3.connect(lite.world.config.sqlite_file)) as conn:
        conn.execute("UPDATE members SET read_seq = 0")  # SQLite moved on afterwards
        conn.commit()

    checked = export_cli(data_dir, target, "--verify-only")
    assert checked.returncode == EXIT_CHECK_FAILED, checked.stdout + checked.stderr
    assert "rows members (values differ)" in checked.stdout and "MISMATCH" in checked.stdout
