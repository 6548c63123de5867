"""Work-group governance: report per admin scope, archive, merge — on a seeded data set."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest

from imserver.store.records import NewMessage
from imserver_sdk import ServerError
from tests.cards_support import ADMIN_KEY
from tests.processes import REPO
from tests.support import Harness

DAY = 86_400_000
NOW = int(time.time() * 1000)
TREE = "\n".join(
    [
        '{"op":"unit","id":"jx","name":"江西","level":"province"}',
        '{"op":"unit","id":"a","name":"甲市","level":"city","parent":"jx"}',
        '{"op":"unit","id":"b","name":"乙市","level":"city","parent":"jx"}',
        *[
            f'{{"op":"member","user":"a{i}","name":"a{i}","units":[{{"unit":"a"}}]}}'
            for i in range(8)
        ],
        *[
            f'{{"op":"member","user":"b{i}","name":"b{i}","units":[{{"unit":"b"}}]}}'
            for i in range(4)
        ],
    ]
).encode()


async def http(server: Harness, method: str, path: str, token: str = ADMIN_KEY, **kw: Any) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            f"{server.world.http_url}{path}",
            headers={"Authorization": f"Bearer {token}"},
            **kw,
        ) as r,
    ):
        if r.content_type == "text/csv":
            return r.status, await r.read()
        return r.status, await r.json()


async def group(
    server: Harness, name: str, owner: str, members: list[str], created: int, messages: list[int]
) -> str:
    """A group created at ``created`` with text messages at the given times (real store)."""
    store = server.world.store
    conv = f"g:{name}"
    notice = NewMessage(
        conv, owner, "d", "system", {"event": "group_created", "actor": owner}, created
    )
    await store.create_group(conv, name, owner, members, notice)
    for i, ts in enumerate(messages):
        await store.append_message(
            NewMessage(conv, owner, "d", "text", {"text": f"m{i}"}, ts, f"{name}-{i}")
        )
    return conv


@pytest.fixture
async def seeded(card_server: Harness) -> Harness:
    status, _ = await http(card_server, "POST", "/admin/v1/directory/sync?mode=full", data=TREE)
    assert status == 200
    # Member sets are chosen so that only dupcopy-a ~ dupkeep-a (6/7) are similar.
    await group(
        card_server, "zombie-a1", "a0", ["a1", "a2", "a3"], NOW - 200 * DAY, [NOW - 120 * DAY]
    )
    await group(card_server, "empty-a01", "a0", ["a1"], NOW - 30 * DAY, [NOW - DAY])
    await group(card_server, "never-a01", "a0", ["a4", "a5", "a6", "a7"], NOW - 30 * DAY, [])
    await group(
        card_server, "active-a1", "a3", ["a4", "a6"], NOW - 30 * DAY, [NOW - DAY, NOW - 1000]
    )
    six = ["a2", "a3", "a4", "a5", "a6"]
    await group(card_server, "dupkeep-a", "a1", six, NOW - 60 * DAY, [NOW - DAY] * 3)
    await group(card_server, "dupcopy-a", "a7", ["a1", *six], NOW - 10 * DAY, [NOW - DAY])
    await group(card_server, "young-a01", "a0", ["a1", "a5", "a7"], NOW - DAY, [])
    await group(
        card_server, "zombie-b1", "b0", ["b1", "b2", "b3"], NOW - 200 * DAY, [NOW - 100 * DAY]
    )
    return card_server


def kinds(findings: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(f["conv"], f["kind"]) for f in findings}


async def test_report_classifies_and_respects_scope(seeded: Harness) -> None:
    status, body = await http(seeded, "GET", "/admin/v1/governance/report")
    assert status == 200 and body["groups"] == 8
    assert kinds(body["findings"]) == {
        ("g:zombie-a1", "zombie"),
        ("g:empty-a01", "empty"),
        ("g:never-a01", "empty"),
        ("g:dupcopy-a", "duplicate"),
        ("g:zombie-b1", "zombie"),
    }
    dup = next(f for f in body["findings"] if f["kind"] == "duplicate")
    assert dup["duplicate_of"] == "g:dupkeep-a" and dup["similarity"] >= 0.8

    # A city admin of 甲市 sees only 甲市's groups.
    status, _ = await http(seeded, "POST", "/admin/v1/admins", json={"user": "a7", "unit": "a"})
    assert status == 201
    status, body = await http(seeded, "GET", "/admin/v1/governance/report", seeded.token("a7"))
    assert status == 200 and "g:zombie-b1" not in {f["conv"] for f in body["findings"]}
    assert body["groups"] == 7

    status, raw = await http(
        seeded, "GET", "/admin/v1/governance/report?format=csv&zombie_days=150"
    )
    assert status == 200 and raw.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert {r["conv"] for r in rows if r["kind"] == "zombie"} == set()  # 150 days: none yet
    status, err = await http(seeded, "GET", "/admin/v1/governance/report?duplicate_threshold=2")
    assert status == 400 and err["error"]["code"] == "invalid_field"


async def test_archive_and_merge(seeded: Harness) -> None:
    a1 = await seeded.client("a1")
    status, body = await http(
        seeded,
        "POST",
        "/admin/v1/governance/archive",
        json={"conv": "g:zombie-a1", "reason": "僵尸群"},
    )
    assert status == 200 and body["changed"] is True
    ev = await a1.next_event(
        "message", predicate=lambda e: e.data["body"].get("event") == "group_archived", timeout=5
    )
    assert ev.data["conv"] == "g:zombie-a1" and ev.data["body"]["reason"] == "僵尸群"
    with pytest.raises(ServerError) as info:
        await a1.send_text("还有人吗", conv="g:zombie-a1")
    assert info.value.code == "forbidden"

    status, body = await http(
        seeded,
        "POST",
        "/admin/v1/governance/merge",
        json={"source": "g:dupcopy-a", "target": "g:dupkeep-a"},
    )
    assert status == 200 and body["added"] == ["a7"]
    members = {m.user for m in await seeded.world.store.members("g:dupkeep-a")}
    assert members == {"a1", "a2", "a3", "a4", "a5", "a6", "a7"}
    status, report = await http(seeded, "GET", "/admin/v1/governance/report")
    convs = {f["conv"] for f in report["findings"]}
    assert "g:zombie-a1" not in convs and "g:dupcopy-a" not in convs  # archived: out of reports
    records = await seeded.world.store.audit.records()
    assert {"governance.archive", "governance.merge"} <= {r.action for r in records}


async def test_scoped_admin_cannot_touch_other_units(seeded: Harness) -> None:
    await http(seeded, "POST", "/admin/v1/admins", json={"user": "a7", "unit": "a"})
    token = seeded.token("a7")
    status, err = await http(
        seeded, "POST", "/admin/v1/governance/archive", token, json={"conv": "g:zombie-b1"}
    )
    assert status == 404 and err["error"]["code"] == "no_such_conversation"
    status, _ = await http(
        seeded,
        "POST",
        "/admin/v1/governance/merge",
        token,
        json={"source": "g:zombie-b1", "target": "g:active-a1"},
    )
    assert status == 404
    conv = await seeded.world.store.get_conversation("g:zombie-b1")
    assert conv is not None and not conv.archived


async def test_cli_report(seeded: Harness, tmp_path: Any) -> None:
    cfg = tmp_path / "cli.toml"
    store = seeded.world.config.store  # the same store the server used, either backend
    cfg.write_text(
        f'[server]\ndata_dir = "{seeded.world.config.server.data_dir}"\n'
        f'[store]\nbackend = "{store.backend}"\ndsn = "{store.dsn}"\n'
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "imserver",
            "governance",
            "report",
            "--config",
            str(cfg),
            "--unit",
            "b",
            "--format",
            "csv",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout.lstrip("\ufeff"))))
    assert [(r["conv"], r["kind"]) for r in rows] == [("g:zombie-b1", "zombie")]
