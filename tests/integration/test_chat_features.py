"""Recall, read cursors and receipts, unread counts, history paging."""

from __future__ import annotations

import asyncio
from typing import Any

from imserver_sdk import ServerError
from tests.support import Harness


async def test_recall_reaches_every_device_and_erases_the_body(server: Harness) -> None:
    await server.users("bob", "carol")
    alice = await server.client("alice")
    alice2 = await server.client("alice", "phone")
    bob = await server.client("bob")
    conv = (await alice.create_group("recall", ["bob", "carol"]))["conv"]
    ack = await alice.send_text("机要 typo", conv=conv)
    result = await alice.recall(conv, ack.seq)
    assert result == {"conv": conv, "seq": ack.seq + 1, "target_seq": ack.seq}
    for c in (alice, alice2, bob):
        ev = await c.next_event(
            "message", predicate=lambda e: e.data["kind"] == "recall", timeout=5
        )
        assert ev.data["body"] == {"target_seq": ack.seq} and ev.data["sender"] == "alice"
    # The stored body is gone, everywhere it can be read.
    stored = await server.world.store.get_message(conv, ack.seq)
    assert stored is not None and stored.recalled and stored.body == {}
    history = await bob.history(conv)
    target = next(m for m in history["messages"] if m["seq"] == ack.seq)
    assert target["recalled"] is True and target["body"] == {}
    # carol was offline: sync brings the recall notice and the erased target.
    carol = await server.client("carol")
    msgs = {m["seq"]: m for m in carol.messages(conv)}
    assert msgs[ack.seq]["recalled"] and msgs[ack.seq]["body"] == {}
    assert msgs[ack.seq + 1]["kind"] == "recall"


async def test_recall_rules(start_server: Any) -> None:
    server: Harness = await start_server(chat={"recall_window_s": 0.3})
    alice = await server.client("alice")
    bob = await server.client("bob")
    ack = await alice.send_text("hello", to="bob")
    try:
        await bob.recall(ack.conv, ack.seq)
        raise AssertionError("bob recalled alice's message")
    except ServerError as e:
        assert e.code == "forbidden"
    await asyncio.sleep(0.4)
    try:
        await alice.recall(ack.conv, ack.seq)
        raise AssertionError("recalled after the window")
    except ServerError as e:
        assert e.code == "recall_window_passed"
    conv = await server.world.store.get_conversation(ack.conv)
    assert conv is not None and conv.last_seq == 1  # nothing appended by the refusals
    try:
        await alice.recall(ack.conv, 99)
        raise AssertionError("recalled a missing message")
    except ServerError as e:
        assert e.code == "no_such_message"


async def test_read_cursor_receipts_and_unread_counts(server: Harness) -> None:
    await server.users("bob", "carol")
    alice = await server.client("alice")
    bob = await server.client("bob")
    bob_phone = await server.client("bob", "phone")
    conv = (await alice.create_group("已读", ["bob", "carol"]))["conv"]
    for i in range(5):
        await alice.send_text(f"n{i}", conv=conv)  # seqs 2..6
    unread = await bob.unread()
    assert unread["total"] == 6
    assert unread["conversations"] == [{"conv": conv, "unread": 6, "last_seq": 6, "read_seq": 0}]
    assert (await alice.unread())["total"] == 0  # your own messages are read

    answer = await bob.read(conv, 4)
    assert answer == {"conv": conv, "read_seq": 4, "unread": 2}
    ev = await bob_phone.next_event("read", timeout=5)
    assert ev.data == {"conv": conv, "user": "bob", "seq": 4}
    # Cursors only move forward, and are clamped to the last seq.
    assert (await bob.read(conv, 2))["read_seq"] == 4
    assert (await bob.read(conv, 999))["read_seq"] == 6

    status = await alice.read_status(conv, 5)
    assert status == {"conv": conv, "seq": 5, "read": ["bob"], "unread": ["carol"]}
    status = await alice.read_status(conv, 1)  # the system notice alice caused
    assert status["read"] == ["bob"] and status["unread"] == ["carol"]


async def test_one_to_one_peer_gets_read_receipt(server: Harness) -> None:
    alice = await server.client("alice")
    bob = await server.client("bob")
    ack = await alice.send_text("请阅", to="bob")
    await bob.read(ack.conv, ack.seq)
    ev = await alice.next_event("read", timeout=5)
    assert ev.data == {"conv": ack.conv, "user": "bob", "seq": 1}


async def test_history_pages_backwards(server: Harness) -> None:
    alice = await server.client("alice")
    await server.users("bob")
    for i in range(25):
        await alice.send_text(f"h{i}", to="bob")
    page = await alice.history("dm:alice:bob", limit=10)
    assert [m["seq"] for m in page["messages"]] == list(range(16, 26)) and page["more"]
    page = await alice.history("dm:alice:bob", before_seq=16, limit=10)
    assert [m["seq"] for m in page["messages"]] == list(range(6, 16)) and page["more"]
    page = await alice.history("dm:alice:bob", before_seq=6, limit=10)
    assert [m["seq"] for m in page["messages"]] == list(range(1, 6)) and not page["more"]
