"""The classified-content guard (DLP) at every door, and the audit log behind it.

DLP: messages (JSON and msgpack), group names, file names and text-file
content, app cards (push, PATCH, callback answers) and notices carrying a
classification mark (密级标志) are refused with ``classified_content``; nothing
is stored or delivered and each refusal is an audit record ``dlp.refused``.
Ordinary office language about confidentiality passes.

Audit: card decisions and admin actions are recorded; the hash chain verifies
(in process and with ``python -m imserver audit verify`` on a real server's
database), and tampering with the database is named by record.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imserver.audit import AuditRecord, canonical, digest
from imserver.cli import verify_audit
from imserver.errors import ConfigError
from imserver.services.membership import dm_id
from imserver.tokens import TokenSigner, load_or_create_secret
from imserver_sdk import BusinessClient, BusinessError, Client, ServerError
from tests.cards_support import ADMIN_KEY, BusinessStub, approval_card
from tests.processes import REPO, ServerProcess
from tests.support import Harness, RawClient

StartServer = Callable[..., Awaitable[Harness]]

# (text, mark the guard must name)
MARKED: list[tuple[str, str]] = [
    ("机密★1年 关于做好防汛工作的通知", "机密"),
    ("密级：秘密", "秘密"),
    ("绝\u200b密★长期\n关于……的请示", "绝密"),  # a zero-width space inside the level
]
CLEAN = ["请秘书长审阅", "数据机密性保护方案", "保密工作会议通知", "修改手机密码"]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def audit_records(h: Harness) -> list[AuditRecord]:
    records: list[AuditRecord] = await h.world.store.audit.records(after_seq=0, limit=1000)
    return records


async def refusals(h: Harness) -> list[tuple[str, str, str, str]]:
    """(actor, target, where, mark) of every ``dlp.refused`` record, in order."""
    return [
        (r.actor, r.target, r.details["where"], r.details["mark"])
        for r in await audit_records(h)
        if r.action == "dlp.refused"
    ]


async def assert_chain_ok(h: Harness) -> None:
    result = await h.world.store.audit.verify()
    records = await audit_records(h)
    assert result.ok, result
    assert result.checked == len(records)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))


async def raw_send(raw: RawClient, text: str, cmid: str | None = None, **target: str) -> Any:
    return await raw.request(
        "send",
        client_msg_id=cmid or uuid.uuid4().hex,
        kind="text",
        body={"text": text},
        **target,
    )


def assert_refused(frame: dict[str, Any], mark: str) -> None:
    assert frame["type"] == "error", frame
    assert frame["code"] == "classified_content", frame
    # A readable message that names the mark, so the sender knows why.
    assert mark in frame["message"] and "涉密" in frame["message"], frame


def auth(h: Harness, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {h.token(user, 'web')}"}


async def upload(
    http: aiohttp.ClientSession,
    h: Harness,
    user: str,
    data: bytes,
    name: str,
    mime: str | None = "text/plain",
) -> tuple[int, dict[str, Any]]:
    headers = auth(h, user)
    if mime is not None:
        headers["Content-Type"] = mime
    async with http.post(
        f"{h.world.http_url}/api/v1/files", params={"name": name}, data=data, headers=headers
    ) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


def stored_files(h: Harness) -> list[Path]:
    root = h.world.config.data_path / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_http_refused(status: int, body: dict[str, Any], mark: str) -> None:
    assert status == 403, (status, body)
    err = body["error"]
    assert err["code"] == "classified_content", body
    assert err["details"] == {"mark": mark}, body
    assert mark in err["message"], body


async def act(
    c: Client, card_id: str, action: str = "approve", action_id: str | None = None, **inputs: str
) -> dict[str, Any]:
    return await c.request(
        "card.act",
        card_id=card_id,
        action=action,
        action_id=action_id or uuid.uuid4().hex,
        inputs=inputs,
    )


async def admin_post(
    http: aiohttp.ClientSession, base: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{base}{path}", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as r:
        answer: dict[str, Any] = await r.json()
        return r.status, answer


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imserver", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


# --------------------------------------------------------------------------- 1. messages


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_marked_messages_are_refused_and_clean_ones_pass(server: Harness, codec: str) -> None:
    await server.users("alice", "bob", "carol")
    bob = await server.client("bob")
    alice = await server.raw("alice", codec=codec)
    first = await raw_send(alice, "你好", to="bob")
    assert first["type"] == "result", first
    conv = first["data"]["conv"]
    await bob.next_event("message", predicate=lambda e: e.data["conv"] == conv)

    cmids = []
    for text, mark in MARKED:
        cmid = uuid.uuid4().hex
        cmids.append(cmid)
        assert_refused(await raw_send(alice, text, cmid, conv=conv), mark)
    # The conversation did not move.
    stored = await server.world.store.get_conversation(conv)
    assert stored is not None and stored.last_seq == 1

    # A first message to a new peer that is refused creates no 1:1 conversation.
    assert_refused(await raw_send(alice, MARKED[0][0], to="carol"), "机密")
    assert await server.world.store.conversations_of("carol") == []

    # Ordinary office language passes; a refused client_msg_id is not "used up".
    for i, text in enumerate(CLEAN):
        ok = await raw_send(alice, text, cmids[0] if i == 0 else None, conv=conv)
        assert ok["type"] == "result", ok
        assert ok["data"]["seq"] == i + 2 and ok["data"]["duplicate"] is False

    # The recipient got exactly the clean messages, live and on sync.
    for i, text in enumerate(CLEAN):
        ev = await bob.next_event("message", predicate=lambda e: e.data["conv"] == conv)
        assert (ev.data["seq"], ev.data["body"]["text"]) == (i + 2, text)
    await bob.sync()
    assert [m["body"]["text"] for m in bob.messages(conv)] == ["你好", *CLEAN]
    history = await bob.history(conv)
    assert [m["seq"] for m in history["messages"]] == [1, 2, 3, 4, 5]

    assert await refusals(server) == [
        *[("alice", conv, "message", mark) for _, mark in MARKED],
        ("alice", dm_id("alice", "carol"), "message", "机密"),
    ]
    await assert_chain_ok(server)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_refusal_error_frame_carries_details_mark(server: Harness, codec: str) -> None:
    """protocol.md section 2: errors may add ``details``; classified_content names the mark.

    The HTTP API sends ``error.details``; the WebSocket error frame must too, or
    a client cannot tell the user *which* mark was found without parsing prose.
    """
    await server.users("alice", "bob")
    alice = await server.raw("alice", codec=codec)
    frame = await raw_send(alice, "密级：秘密", to="bob")
    assert frame["code"] == "classified_content", frame
    assert frame.get("details") == {"mark": "秘密"}, frame


async def test_file_message_with_marked_name_is_refused(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice", "bob")
    status, meta = await upload(http, server, "alice", b"clean text", "notes.txt")
    assert status == 201, meta
    alice = await server.raw("alice")
    frame = await alice.request(
        "send",
        to="bob",
        client_msg_id="f1",
        kind="file",
        body={"file": {**meta, "name": "机密★1年-方案.docx"}},
    )
    assert_refused(frame, "机密")
    assert await server.world.store.conversations_of("bob") == []
    assert [(r[0], r[2], r[3]) for r in await refusals(server)] == [("alice", "message", "机密")]


# --------------------------------------------------------------------------- 2. groups


async def test_marked_group_names_are_refused(server: Harness) -> None:
    await server.users("bob")
    alice = await server.client("alice")
    with pytest.raises(ServerError) as info:
        await alice.create_group("机密★1年 专项工作组", ["bob"])
    assert info.value.code == "classified_content" and "机密" in info.value.message
    assert [
        c for c in await server.world.store.conversations_of("alice") if c.kind == "group"
    ] == []
    assert await server.world.store.conversations_of("bob") == []

    conv = (await alice.create_group("应急专班", ["bob"]))["conv"]
    before = await server.world.store.get_conversation(conv)
    assert before is not None
    with pytest.raises(ServerError) as info:
        await alice.rename_group(conv, "密级：秘密")
    assert info.value.code == "classified_content" and "秘密" in info.value.message
    after = await server.world.store.get_conversation(conv)
    assert after is not None
    assert (after.name, after.last_seq) == ("应急专班", before.last_seq)
    # A clean rename still works.
    await alice.rename_group(conv, "保密工作专班")
    renamed = await server.world.store.get_conversation(conv)
    assert renamed is not None and renamed.name == "保密工作专班"

    assert await refusals(server) == [
        ("alice", "new group", "group.name", "机密"),
        ("alice", conv, "group.name", "秘密"),
    ]
    await assert_chain_ok(server)


# --------------------------------------------------------------------------- 3. files


async def test_marked_file_name_and_text_content_are_refused(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice")
    name = "机密★1年-方案.docx"
    status, body = await upload(http, server, "alice", b"%PDF-1.7 ...", name, "application/pdf")
    assert_http_refused(status, body, "机密")
    assert stored_files(server) == []

    text = "关于报送材料的通知\n绝密★长期\n请于周五前报送。\n"
    for encoding in ("utf-8", "gb18030", "utf-16"):  # utf-16: Notepad "Unicode", with BOM
        data = text.encode(encoding)
        status, body = await upload(http, server, "alice", data, f"通知-{encoding}.txt")
        assert_http_refused(status, body, "绝密")
        assert stored_files(server) == [], encoding
        assert await server.world.store.get_file(hashlib.sha256(data).hexdigest()) is None

    clean = "保密工作会议通知\n请秘书长审阅数据机密性保护方案。\n".encode("gb18030")
    status, body = await upload(http, server, "alice", clean, "会议通知.txt")
    assert status == 201, body
    assert [p.name for p in stored_files(server)] == [hashlib.sha256(clean).hexdigest()]

    assert await refusals(server) == [
        ("alice", name, "file.name", "机密"),
        ("alice", "通知-utf-8.txt", "file.content", "绝密"),
        ("alice", "通知-gb18030.txt", "file.content", "绝密"),
        ("alice", "通知-utf-16.txt", "file.content", "绝密"),
    ]
    await assert_chain_ok(server)


async def test_marked_text_file_without_text_mime_is_refused(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    """A ``.txt`` sent as application/octet-stream (or with no Content-Type, which
    the server treats as octet-stream) is still a text file: its content must be
    scanned, otherwise the guard depends on a header the client chooses."""
    await server.users("alice")
    data = "绝密★长期\n关于……的请示\n".encode()
    for mime in ("application/octet-stream", None):
        status, body = await upload(http, server, "alice", data, "请示.txt", mime)
        assert_http_refused(status, body, "绝密")
    assert stored_files(server) == []


async def test_refused_text_upload_does_not_delete_an_earlier_identical_file(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    """Files are stored by content hash. Bytes that were stored unscanned (binary:
    a PNG header full of NUL and non-UTF-8 bytes, so not sniffed as text — one
    NUL alone no longer makes a file binary, issue #12) and are then uploaded
    again as text/plain are refused, but the refusal must not unlink the copy
    another upload still points at."""
    await server.users("alice", "bob")
    data = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" * 8 + "机密★1年\n附件\n".encode()
    status, meta = await upload(http, server, "alice", data, "附件.bin", "application/pdf")
    assert status == 201, meta
    status, body = await upload(http, server, "bob", data, "附件.txt", "text/plain")
    assert_http_refused(status, body, "机密")
    async with http.get(
        f"{server.world.http_url}/api/v1/files/{meta['id']}", headers=auth(server, "alice")
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.read() == data


# --------------------------------------------------------------------------- 4. cards


async def test_marked_card_push_is_refused_and_nothing_stored(
    card_server: Harness, oa: BusinessClient
) -> None:
    await card_server.users("li")
    variants: list[tuple[str, dict[str, Any], str]] = [
        ("field", {"fields": [{"label": "文件", "value": "机密★1年 关于…的通知"}]}, "机密"),
        ("title", {"title": "密级：秘密 请审批"}, "秘密"),
        ("body", {"body_md": "**附件**\n\n绝密★长期"}, "绝密"),
    ]
    for track, extra, mark in variants:
        with pytest.raises(BusinessError) as info:
            await oa.push_card(approval_card(track, ["li"], **extra), users=["li"])
        err = info.value
        assert (err.status, err.code) == (403, "classified_content"), err
        assert err.body.get("details") == {"mark": mark}, err.body
        assert await card_server.world.store.get_card_by_track("oa", track) is None
    assert await card_server.world.store.conversations_of("li") == []
    # A clean card with ordinary confidentiality vocabulary passes.
    ok = await oa.push_card(
        approval_card("ok", ["li"], title="数据机密性保护方案审批"), users=["li"]
    )
    assert ok["version"] == 1

    assert await refusals(card_server) == [
        ("app:oa", track, "card", mark) for track, _, mark in variants
    ]
    await assert_chain_ok(card_server)


async def test_marked_card_update_is_refused_and_version_unchanged(
    card_server: Harness, oa: BusinessClient
) -> None:
    await card_server.users("li")
    await oa.push_card(approval_card("upd", ["li"]), users=["li"])
    for changes in (
        {"title": "机密★1年 请假审批"},
        {"status": {"text": "密级：机密", "color": "red"}},
        {"fields": [{"label": "密级", "value": "秘密"}]},
    ):
        with pytest.raises(BusinessError) as info:
            await oa.update_card("upd", **changes)
        assert (info.value.status, info.value.code) == (403, "classified_content"), changes
    card = await card_server.world.store.get_card_by_track("oa", "upd")
    assert card is not None
    assert card.version == 1 and card.doc["title"] == "请假审批：张三 3 天"
    assert card.doc["status"]["text"] == "待审批"
    # A clean update is applied.
    assert (await oa.update_card("upd", title="请假审批（已补材料）"))["version"] == 2
    assert [r[:3] for r in await refusals(card_server)] == [("app:oa", "upd", "card")] * 3


async def test_marked_callback_answer_is_not_applied(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    await card_server.users("li")
    stub.answer = lambda a: {"title": "机密★1年 审批结果", "status": {"text": "已办结"}}
    card_id = (await oa.push_card(approval_card("cb", ["li"]), users=["li"]))["card_id"]
    li = await card_server.client("li")
    assert (await act(li, card_id))["state"] == "approved"
    await asyncio.wait_for(stub.got_action.wait(), 5)
    store = card_server.world.store
    for _ in range(250):
        card = await store.get_card(card_id)
        assert card is not None
        if card.callback != "pending":
            break
        await asyncio.sleep(0.02)
    # Delivered (so not retried), but the marked answer was dropped.
    assert card is not None and card.callback == "ok"
    assert card.doc["title"] == "请假审批：张三 3 天"
    assert card.doc["status"]["text"] == "待审批"
    assert [r[:3] for r in await refusals(card_server)] == [("app:oa", "cb", "card")]
    await assert_chain_ok(card_server)


async def test_marked_notices_are_refused(card_server: Harness, oa: BusinessClient) -> None:
    await card_server.users("zhao")
    for title, text, mark in (
        ("机密★1年 通知", "请查收", "机密"),
        ("停电通知", "密级：秘密\n明日 9:00-12:00 停电", "秘密"),
    ):
        with pytest.raises(BusinessError) as info:
            await oa.send_notice(title, text, users=["zhao"])
        assert (info.value.status, info.value.code) == (403, "classified_content")
        assert info.value.body.get("details") == {"mark": mark}
    assert await card_server.world.store.get_conversation("n:oa:zhao") is None
    sent = await oa.send_notice("保密工作会议通知", "请秘书长审阅", users=["zhao"])
    assert sent["recipients"] == 1
    assert await refusals(card_server) == [
        ("app:oa", "notice", "notice", "机密"),
        ("app:oa", "notice", "notice", "秘密"),
    ]


async def test_card_action_comment_with_a_mark_is_refused(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    """The 意见 a person types when acting is stored with the decision and sent to
    the business system: it is text coming in through a door like any message."""
    await card_server.users("li")
    card_id = (await oa.push_card(approval_card("cm", ["li"]), users=["li"]))["card_id"]
    li = await card_server.client("li")
    with pytest.raises(ServerError) as info:
        await act(li, card_id, "reject", comment="机密★1年 文件已阅，不同意")
    assert info.value.code == "classified_content"
    card = await card_server.world.store.get_card(card_id)
    assert card is not None and card.version == 1 and card.approval["decisions"] == []
    assert stub.actions == []


# --------------------------------------------------------------------------- 5. configuration


async def test_dlp_disabled_lets_marks_through(start_server: StartServer) -> None:
    h = await start_server(security={"dlp_enabled": False})
    await h.users("bob")
    alice = await h.client("alice")
    ack = await alice.send_text("机密★1年", to="bob")
    assert ack.seq == 1
    assert (await alice.create_group("密级：秘密", ["bob"]))["name"] == "密级：秘密"
    assert await refusals(h) == []


async def test_custom_patterns_replace_the_defaults(start_server: StartServer) -> None:
    h = await start_server(security={"dlp_patterns": ["内部资料"]})
    await h.users("bob")
    alice = await h.client("alice")
    with pytest.raises(ServerError) as info:
        await alice.send_text("内部资料，注意保管", to="bob")
    assert info.value.code == "classified_content" and "内部资料" in info.value.message
    assert (await alice.send_text("机密★1年", to="bob")).seq == 1
    assert [(r[0], r[2], r[3]) for r in await refusals(h)] == [("alice", "message", "内部资料")]
    await assert_chain_ok(h)


async def test_invalid_custom_pattern_fails_at_start(start_server: StartServer) -> None:
    with pytest.raises(ConfigError) as info:
        await start_server(security={"dlp_patterns": ["("]})
    assert info.value.key == "security.dlp_patterns" and "'('" in str(info.value)


# --------------------------------------------------------------------------- 6-8. audit


async def test_card_decisions_and_admin_actions_are_recorded(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub, http: aiohttp.ClientSession
) -> None:
    base = card_server.world.http_url
    status, body = await admin_post(
        http, base, "/admin/v1/users", {"users": [{"id": "li", "name": "李"}, {"id": "wang"}]}
    )
    assert status == 200, body
    await card_server.users("zhao")
    li, wang, zhao = [await card_server.client(u) for u in ("li", "wang", "zhao")]
    pushed = await oa.push_card(
        approval_card("all-1", ["li", "wang"], policy="all"), users=["li", "wang", "zhao"]
    )
    card_id = pushed["card_id"]

    assert (await act(li, card_id, action_id="a1"))["state"] == "open"
    assert (await act(li, card_id, action_id="a1"))["repeat"] is True  # idempotent repeat
    refused: list[tuple[Client, dict[str, Any]]] = [
        (li, {"action_id": "a2"}),  # already acted
        (zhao, {}),  # not an actor
        (wang, {"action": "reject"}),  # reject needs a comment
        (li, {"action": "nope"}),  # no such action
    ]
    for client, kwargs in refused:
        with pytest.raises(ServerError):
            await act(client, card_id, **kwargs)
    assert (await act(wang, card_id, action_id="w1"))["state"] == "approved"
    with pytest.raises(ServerError) as info:
        await act(wang, card_id, action_id="w2")
    assert info.value.code == "card_decided"

    records = await audit_records(card_server)
    decisions = [r for r in records if r.action == "card.decision"]
    assert [(r.actor, r.target) for r in decisions] == [("li", card_id), ("wang", card_id)]
    assert [
        (r.details["decision"], r.details["state"], r.details["action_id"]) for r in decisions
    ] == [("approve", "open", "a1"), ("approve", "approved", "w1")]
    assert all(
        r.details["app_id"] == "oa" and r.details["out_track_id"] == "all-1" for r in decisions
    )

    apps = [r for r in records if r.action == "admin.app_upsert"]
    assert [(r.actor, r.target) for r in apps] == [("admin-key", "oa")]
    assert apps[0].details == {"callback_url": stub.url, "scope": ["*"], "events": []}
    users = [r for r in records if r.action == "admin.users_upsert"]
    assert [(r.actor, r.target, r.details["ids"]) for r in users] == [
        ("admin-key", "users", ["li", "wang"])
    ]
    # A refused admin call (wrong key) is not an action: nothing recorded.
    async with http.post(
        f"{base}/admin/v1/users",
        json={"users": [{"id": "x"}]},
        headers={"Authorization": "Bearer wrong-key-0123456789"},
    ) as r:
        assert r.status == 403
    assert len(await audit_records(card_server)) == len(records)
    await assert_chain_ok(card_server)


async def test_whole_chain_verifies_after_mixed_activity(
    card_server: Harness, oa: BusinessClient, http: aiohttp.ClientSession
) -> None:
    await card_server.users("li", "bob")
    li = await card_server.client("li")
    for text, _ in MARKED:
        with pytest.raises(ServerError):
            await li.send_text(text, to="bob")
    with pytest.raises(ServerError):
        await li.create_group("机密★1年", ["bob"])
    status, _ = await upload(http, card_server, "li", "绝密★长期".encode(), "a.txt")
    assert status == 403
    with pytest.raises(BusinessError):
        await oa.send_notice("机密★1年", "x", users=["li"])
    card_id = (await oa.push_card(approval_card("v", ["li"]), users=["li"]))["card_id"]
    await act(li, card_id)

    records = await audit_records(card_server)
    assert [r.action for r in records] == [
        "admin.app_upsert",
        *["dlp.refused"] * 6,
        "card.decision",
    ]
    assert all(r.algorithm == "sha256" for r in records)
    last = await card_server.world.store.audit.last()
    result = await card_server.world.store.audit.verify()
    assert result.ok and result.checked == 8
    assert last is not None and result.head_hash == last.hash
    # The same store checked from outside the server, as the CLI does.
    outside = await asyncio.to_thread(verify_audit, card_server.world.config, None)
    assert outside.ok and outside.checked == 8 and outside.head_hash == last.hash


# --------------------------------------------------------------------------- 9. CLI


async def test_audit_verify_cli_on_a_real_server_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = ServerProcess(data_dir, extra_toml=f'[auth]\nadmin_api_key = "{ADMIN_KEY}"\n')
    proc.start()
    try:
        await proc.wait_ready()
        async with aiohttp.ClientSession() as http:
            users = {"users": [{"id": "alice"}, {"id": "bob"}]}
            status, _ = await admin_post(http, proc.http_url, "/admin/v1/users", users)
            assert status == 200
            app = {
                "app_id": "oa",
                "secret": "s" * 40,
                "callback_url": "http://127.0.0.1:9/callback",
                "scope": ["*"],
            }
            status, _ = await admin_post(http, proc.http_url, "/admin/v1/apps", app)
            assert status == 201
        signer = TokenSigner(load_or_create_secret("", data_dir))
        alice = Client(proc.url, signer.mint("alice", "pc", 600), reconnect=False)
        await alice.connect()
        try:
            for text, _ in MARKED:
                with pytest.raises(ServerError) as info:
                    await alice.send_text(text, to="bob")
                assert info.value.code == "classified_content"
            await alice.send_text("保密工作会议通知", to="bob")
        finally:
            await alice.close()
        async with BusinessClient(proc.http_url, "oa", "s" * 40) as oa:
            with pytest.raises(BusinessError) as berr:
                await oa.send_notice("机密★1年 通知", "请查收", users=["bob"])
            assert berr.value.code == "classified_content"
    finally:
        proc.stop()
    config = str(proc.config_path)
    db = data_dir / "imserver.db"
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    assert count == 6  # users, app, 3 messages, 1 notice

    ok = await asyncio.to_thread(run_cli, "audit", "verify", "--config", config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"ok: {count} records"), ok.stdout

    # Tamper: change a middle record's details (the trigger must go first).
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit_log SET details = '{}' WHERE seq = 3")
        original = conn.execute("SELECT details FROM audit_log WHERE seq = 3").fetchone()[0]
        conn.execute("DROP TRIGGER audit_log_no_update")
        forged = '{"mark":"秘密","text":"无","where":"message"}'
        conn.execute("UPDATE audit_log SET details = ? WHERE seq = 3", (forged,))
    finally:
        conn.close()
    bad = await asyncio.to_thread(run_cli, "audit", "verify", "--config", config)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "BROKEN at record 3" in bad.stdout and "hash mismatch" in bad.stdout, bad.stdout

    # Undo the edit: intact again. Then delete a middle row.
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("UPDATE audit_log SET details = ? WHERE seq = 3", (original,))
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_log WHERE seq = 4")
        conn.execute("DROP TRIGGER audit_log_no_delete")
        conn.execute("DELETE FROM audit_log WHERE seq = 4")
    finally:
        conn.close()
    again = await asyncio.to_thread(run_cli, "audit", "verify", "--config", config)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "BROKEN at record 4" in again.stdout and "gap" in again.stdout, again.stdout


def test_audit_verify_cli_without_a_database_exits_4(tmp_path: Path) -> None:
    """Issue #12 item 13: say there is no database yet (exit 4), not an SQL error."""
    cfg = tmp_path / "missing.toml"
    cfg.write_text(f'[server]\ndata_dir = "{(tmp_path / "nowhere").as_posix()}"\n')
    proc = run_cli("audit", "verify", "--config", str(cfg))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no database yet at" in proc.stderr and "start the server once" in proc.stderr
    assert not (tmp_path / "nowhere" / "imserver.db").exists()


# --------------------------------------------------------------------------- 10. algorithm


async def test_sm3_records_carry_sm3_and_verify(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    h = await start_server(security={"audit_algorithm": "sm3"}, auth={"admin_api_key": ADMIN_KEY})
    status, _ = await admin_post(
        http, h.world.http_url, "/admin/v1/users", {"users": [{"id": "b"}]}
    )
    assert status == 200
    alice = await h.client("alice")
    with pytest.raises(ServerError):
        await alice.send_text("机密★1年", to="b")
    records = await audit_records(h)
    assert [r.action for r in records] == ["admin.users_upsert", "dlp.refused"]
    for r in records:
        assert r.algorithm == "sm3"
        data = canonical(
            r.seq, r.at, r.actor, r.action, r.target, r.details, r.prev_hash, r.algorithm
        )
        assert r.hash == digest("sm3", data) != digest("sha256", data)
    await assert_chain_ok(h)
    outside = await asyncio.to_thread(verify_audit, h.world.config, None)
    assert outside.ok and outside.checked == 2


async def test_invalid_audit_algorithm_fails_at_start(
    start_server: StartServer, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        await start_server(security={"audit_algorithm": "md5"})
    assert info.value.key == "security.audit_algorithm"
    assert "security.audit_algorithm" in str(info.value)

    cfg = tmp_path / "bad-alg.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{(tmp_path / "d").as_posix()}"\nws_port = 0\nhttp_port = 0\n'
        '[security]\naudit_algorithm = "sha1"\n'
    )
    proc = await asyncio.to_thread(run_cli, "serve", "--config", str(cfg))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "security.audit_algorithm" in proc.stderr
