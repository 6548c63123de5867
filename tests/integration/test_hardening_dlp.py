"""Issue #12 item 3: classified-mark guard bypasses, against a real server.

Each bypass the outside test stored — invisible characters inside a mark,
star lookalikes, markup in card ``body_md`` and notices, the governance
archive ``reason``, a file message's client-chosen ``mime``, text files
under a non-text Content-Type (UTF-16 with BOM, UTF-8 with one NUL or one
stray 0xFF) — is sent the way a client or business system sends it: over
the WebSocket, over signed HTTP, over the admin API. Each must be refused
with ``classified_content``, audited, and leave nothing stored.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from imserver.store.records import NewMessage
from imserver_sdk import BusinessClient, BusinessError, ServerError
from tests.cards_support import ADMIN_KEY, approval_card
from tests.integration.test_dlp_and_audit import stored_files, upload
from tests.support import Harness, RawClient

# (text, level) as the tester sent them.
INVISIBLE = [
    ("机\U000e0020密★1年", "机密"),  # TAG SPACE
    ("机\U000e0100密★1年", "机密"),  # VARIATION SELECTOR-17
    ("秘\u180b密★6个月", "秘密"),  # MONGOLIAN FVS1
    ("绝\u17b4密★长期", "绝密"),  # KHMER VOWEL INHERENT AQ
    ("机\U0001d173密★1年", "机密"),  # MUSICAL SYMBOL BEGIN BEAM
]
STARS = [("机密✶1年", "机密"), ("秘密✱6个月", "秘密"), ("绝密⛤长期", "绝密")]
BYPASSES = INVISIBLE + STARS
MARKDOWN = [("机**密**★1年", "机密"), ("机&#23494;★1年", "机密"), ("机<b></b>密★1年", "机密")]
TEXT_FILE = "关于报送材料的通知\n绝密★长期\n请于周五前报送。\n"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def refusals(h: Harness) -> list[tuple[str, str, str]]:
    """(actor, where, mark) of every ``dlp.refused`` audit record, in order."""
    records = await h.world.store.audit.records(after_seq=0, limit=1000)
    return [
        (r.actor, r.details["where"], r.details["mark"])
        for r in records
        if r.action == "dlp.refused"
    ]


def assert_refused(frame: dict[str, Any], mark: str) -> None:
    assert frame["type"] == "error", frame
    assert frame["code"] == "classified_content", frame
    assert frame.get("details") == {"mark": mark}, frame


async def send_text(raw: RawClient, text: str, **target: str) -> dict[str, Any]:
    return await raw.request(
        "send", client_msg_id=uuid.uuid4().hex, kind="text", body={"text": text}, **target
    )


def assert_http_refused(status: int, body: dict[str, Any], mark: str) -> None:
    assert status == 403, (status, body)
    assert body["error"]["code"] == "classified_content", body
    assert body["error"]["details"] == {"mark": mark}, body


async def admin(
    http: aiohttp.ClientSession, h: Harness, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{h.world.http_url}{path}", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as resp:
        answer: dict[str, Any] = await resp.json()
        return resp.status, answer


# --------------------------------------------------------------------------- WebSocket


async def test_bypassed_marks_in_messages_are_refused(server: Harness) -> None:
    await server.users("alice", "bob")
    bob = await server.client("bob")
    alice = await server.raw("alice")
    first = await send_text(alice, "你好", to="bob")
    conv = first["data"]["conv"]
    await bob.next_event("message", predicate=lambda e: e.data["conv"] == conv)

    for text, mark in BYPASSES:
        assert_refused(await send_text(alice, f"{text} 关于做好防汛工作的通知", conv=conv), mark)
    stored = await server.world.store.get_conversation(conv)
    assert stored is not None and stored.last_seq == 1
    # Markup is not a bypass in a plain-text message: the client shows it as
    # written, so "机&#23494;★1年" reads as ASCII and goes through.
    literal = await send_text(alice, "机&#23494;★1年", conv=conv)
    assert literal["type"] == "result", literal
    ev = await bob.next_event("message", predicate=lambda e: e.data["conv"] == conv)
    assert ev.data["seq"] == 2 and ev.data["body"]["text"] == "机&#23494;★1年"
    assert await refusals(server) == [("alice", "message", mark) for _, mark in BYPASSES]


async def test_bypassed_marks_in_group_names_are_refused(server: Harness) -> None:
    await server.users("bob")
    alice = await server.client("alice")
    for text, mark in BYPASSES:
        with pytest.raises(ServerError) as info:
            await alice.create_group(f"{text}专项工作组", ["bob"])
        assert info.value.code == "classified_content", text
        assert mark in info.value.message
    assert await server.world.store.conversations_of("bob") == []

    conv = (await alice.create_group("应急专班", ["bob"]))["conv"]
    with pytest.raises(ServerError) as info:
        await alice.rename_group(conv, INVISIBLE[0][0])
    assert info.value.code == "classified_content"
    after = await server.world.store.get_conversation(conv)
    assert after is not None and after.name == "应急专班"
    assert [w for _, w, _ in await refusals(server)] == ["group.name"] * (len(BYPASSES) + 1)


async def test_bypassed_marks_in_file_names_are_refused(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice", "bob")
    for text, mark in BYPASSES:
        status, body = await upload(
            http, server, "alice", b"%PDF-1.7 ...", f"{text}-方案.pdf", "application/pdf"
        )
        assert_http_refused(status, body, mark)
    assert stored_files(server) == []

    # The name given in a file message is checked too.
    status, meta = await upload(http, server, "alice", b"clean", "notes.txt", "text/plain")
    assert status == 201, meta
    alice = await server.raw("alice")
    for text, mark in BYPASSES:
        frame = await alice.request(
            "send",
            to="bob",
            client_msg_id=uuid.uuid4().hex,
            kind="file",
            body={"file": {**meta, "name": f"{text}.docx"}},
        )
        assert_refused(frame, mark)
    assert await server.world.store.conversations_of("bob") == []


async def test_file_message_carries_the_uploaded_type_not_the_claimed_one(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    """The stored ``mime`` of a file message is the one recorded at upload.

    Before, a client's ``mime`` was stored and shown to every member as sent:
    free text (``机密★1年``) past the guard, and a lie about the type.
    """
    await server.users("alice", "bob")
    bob = await server.client("bob")
    status, meta = await upload(
        http, server, "alice", b"%PDF-1.7 ...", "方案.pdf", "application/pdf"
    )
    assert status == 201 and meta["mime"] == "application/pdf", meta
    alice = await server.raw("alice")
    for claimed in ("机\U000e0020密★1年", "text/plain"):
        frame = await alice.request(
            "send",
            to="bob",
            client_msg_id=uuid.uuid4().hex,
            kind="file",
            body={"file": {**meta, "mime": claimed}},
        )
        assert frame["type"] == "result", frame
        ev = await bob.next_event("message")
        assert ev.data["body"]["file"]["mime"] == "application/pdf"
    history = await bob.history(frame["data"]["conv"])
    assert [m["body"]["file"]["mime"] for m in history["messages"]] == ["application/pdf"] * 2


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("utf-16-bom", TEXT_FILE.encode("utf-16")),
        ("utf-8-nul", TEXT_FILE.encode() + b"\x00"),
        ("utf-8-ff", TEXT_FILE.encode()[:9] + b"\xff" + TEXT_FILE.encode()[9:]),
    ],
    ids=["utf-16-bom", "utf-8-nul", "utf-8-ff"],
)
async def test_text_uploads_under_octet_stream_are_scanned(
    server: Harness, http: aiohttp.ClientSession, label: str, data: bytes
) -> None:
    await server.users("alice")
    status, body = await upload(
        http, server, "alice", data, f"通知-{label}.txt", "application/octet-stream"
    )
    assert_http_refused(status, body, "绝密")
    assert stored_files(server) == []
    assert await server.world.store.get_file(hashlib.sha256(data).hexdigest()) is None
    assert await refusals(server) == [("alice", "file.content", "绝密")]


async def test_clean_text_and_real_binaries_under_octet_stream_are_stored(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice")
    clean = "保密工作会议通知\n请秘书长审阅数据机密性保护方案。\n".encode("utf-16")
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    for data, name in ((clean, "会议通知.txt"), (png, "图.png")):
        status, body = await upload(http, server, "alice", data, name, "application/octet-stream")
        assert status == 201, body
        assert body["mime"] == "application/octet-stream"
    assert len(stored_files(server)) == 2
    assert await refusals(server) == []


# --------------------------------------------------------------------------- cards and notices


async def test_markup_in_card_body_md_is_refused_over_signed_http(
    card_server: Harness, oa: BusinessClient
) -> None:
    await card_server.users("li")
    for i, (body_md, mark) in enumerate(MARKDOWN):
        track = f"md{i}"
        with pytest.raises(BusinessError) as info:
            await oa.push_card(approval_card(track, ["li"], body_md=body_md), users=["li"])
        assert (info.value.status, info.value.code) == (403, "classified_content"), body_md
        assert info.value.body.get("details") == {"mark": mark}
        assert await card_server.world.store.get_card_by_track("oa", track) is None
    assert await card_server.world.store.conversations_of("li") == []

    await oa.push_card(approval_card("ok", ["li"]), users=["li"])
    with pytest.raises(BusinessError) as info:
        await oa.update_card("ok", body_md=MARKDOWN[1][0])
    assert info.value.code == "classified_content"
    card = await card_server.world.store.get_card_by_track("oa", "ok")
    assert card is not None and card.version == 1
    assert card.doc["body_md"] == "**起止**：11月27日—11月29日"
    assert [w for _, w, _ in await refusals(card_server)] == ["card"] * (len(MARKDOWN) + 1)


async def test_markup_in_notice_text_is_refused(card_server: Harness, oa: BusinessClient) -> None:
    await card_server.users("zhao")
    with pytest.raises(BusinessError) as info:
        await oa.send_notice("停电通知", "机<b></b>密★1年\n明日停电", users=["zhao"])
    assert (info.value.status, info.value.code) == (403, "classified_content")
    assert await card_server.world.store.conversations_of("zhao") == []
    ok = await oa.send_notice("停电通知", "**保密工作**会议改期", users=["zhao"])
    assert ok["recipients"] == 1


# --------------------------------------------------------------------------- governance


async def _group(h: Harness, conv: str, name: str, owner: str, members: list[str]) -> None:
    """A group written straight to the store, as one created before the guard was tightened."""
    notice = NewMessage(conv, owner, "d", "system", {"event": "group_created"}, 1)
    await h.world.store.create_group(conv, name, owner, members, notice)


async def test_marked_archive_reason_is_refused(
    card_server: Harness, http: aiohttp.ClientSession
) -> None:
    await card_server.users("a0", "a1")
    await _group(card_server, "g:old", "旧专班", "a0", ["a1"])
    before = await card_server.world.store.get_conversation("g:old")
    assert before is not None
    for reason, mark in (INVISIBLE[0], STARS[0]):
        status, body = await admin(
            http, card_server, "/admin/v1/governance/archive", {"conv": "g:old", "reason": reason}
        )
        assert_http_refused(status, body, mark)
    after = await card_server.world.store.get_conversation("g:old")
    assert after is not None and not after.archived and after.last_seq == before.last_seq
    status, body = await admin(
        http,
        card_server,
        "/admin/v1/governance/archive",
        {"conv": "g:old", "reason": "长期无人发言"},
    )
    assert status == 200 and body["changed"] is True, body
    assert [w for _, w, _ in await refusals(card_server)] == ["governance.reason"] * 2


async def test_merge_into_a_group_with_a_hidden_mark_in_its_name_changes_nothing(
    card_server: Harness, http: aiohttp.ClientSession
) -> None:
    """The merge notice names the target; a legacy name with a hidden mark is refused
    before any member is moved."""
    await card_server.users("a0", "a1", "a2")
    await _group(card_server, "g:src", "甲组", "a0", ["a1"])
    await _group(card_server, "g:dst", "机\U000e0020密★1年专班", "a2", ["a0"])
    status, body = await admin(
        http, card_server, "/admin/v1/governance/merge", {"source": "g:src", "target": "g:dst"}
    )
    assert_http_refused(status, body, "机密")
    src = await card_server.world.store.get_conversation("g:src")
    assert src is not None and not src.archived
    members = await card_server.world.store.conversations_of("a1")
    assert [c.conv for c in members] == ["g:src"]
