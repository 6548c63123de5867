"""Delivery guarantees 1-3: reach every device once, in order; no loss; no duplicates."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import Harness, RawClient


async def messages_until_quiet(raw: RawClient, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Every message event that arrives until the socket has been quiet for ``quiet`` s."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            frame = await raw.recv(timeout=quiet)
        except TimeoutError:
            return out
        if frame.get("type") == "event" and frame.get("event") == "message":
            out.append(frame["data"])


async def test_one_to_one_reaches_every_device_of_both_users_once(server: Harness) -> None:
    a1 = await server.raw("alice", "pc")
    a2 = await server.raw("alice", "phone", codec="msgpack")
    b1 = await server.raw("bob", "pc", codec="msgpack")
    b2 = await server.raw("bob", "phone")
    answer = await a1.request(
        "send", to="bob", client_msg_id="m1", kind="text", body={"text": "你好"}
    )
    assert answer["type"] == "result"
    assert answer["data"]["conv"] == "dm:alice:bob" and answer["data"]["seq"] == 1
    for raw in (a1, a2, b1, b2):
        got = await messages_until_quiet(raw)
        assert [(m["seq"], m["body"]["text"]) for m in got] == [(1, "你好")]
        assert got[0]["sender"] == "alice" and got[0]["device"] == "pc"


@pytest.mark.slow
async def test_fifty_member_group_every_online_device_gets_each_message_once(
    server: Harness,
) -> None:
    names = [f"u{i:02d}" for i in range(50)]
    await server.users(*names)
    raws = [
        await server.raw(name, codec="msgpack" if i % 2 else "json") for i, name in enumerate(names)
    ]
    created = await raws[0].request("group.create", name="县委办", members=names[1:])
    assert created["type"] == "result", created
    conv = created["data"]["conv"]
    for i in range(5):
        ack = await raws[i].request(
            "send", conv=conv, client_msg_id=f"g{i}", kind="text", body={"text": f"msg {i}"}
        )
        assert ack["type"] == "result" and ack["data"]["seq"] == i + 2
    for got in await asyncio.gather(*(messages_until_quiet(raw) for raw in raws)):
        assert [m["seq"] for m in got] == [1, 2, 3, 4, 5, 6]
        assert got[0]["kind"] == "system" and got[0]["body"]["event"] == "group_created"
        assert [m["body"]["text"] for m in got[1:]] == [f"msg {i}" for i in range(5)]


async def test_offline_member_gets_everything_in_order_on_reconnect(
    start_server: Any,
) -> None:
    # Small pages so that the resume loop has to page through conversations and messages.
    server: Harness = await start_server(
        limits={"sync_page_messages": 7, "sync_page_conversations": 1}
    )
    await server.users("bob", "carol")
    alice = await server.client("alice")
    group = await alice.create_group("乡镇工作群", ["bob", "carol"])
    conv = group["conv"]
    for i in range(30):
        await alice.send_text(f"group {i}", conv=conv)
        await alice.send_text(f"dm {i}", to="bob")

    bob = await server.client("bob")  # connect() syncs
    group_msgs = bob.messages(conv)
    assert [m["seq"] for m in group_msgs] == list(range(1, 32))
    assert [m["body"]["text"] for m in group_msgs[1:]] == [f"group {i}" for i in range(30)]
    dm_msgs = bob.messages("dm:alice:bob")
    assert [m["seq"] for m in dm_msgs] == list(range(1, 31))
    assert [m["body"]["text"] for m in dm_msgs] == [f"dm {i}" for i in range(30)]

    # Resume with what bob holds: nothing is missing, nothing comes twice.
    raw = await server.raw("bob", "tablet")
    answer = await raw.request("sync", since={conv: 31, "dm:alice:bob": 30})
    assert (answer["data"]["conversations"], answer["data"]["more"]) == ([], False)
    answer = await raw.request("sync", since={conv: 29, "dm:alice:bob": 30})
    convs = answer["data"]["conversations"]
    assert [(c["conv"], [m["seq"] for m in c["messages"]]) for c in convs] == [(conv, [30, 31])]


async def test_client_reconnecting_after_a_drop_resumes_without_gaps(server: Harness) -> None:
    alice = await server.client("alice")
    bob = await server.client("bob", "phone")
    await alice.send_text("before", to="bob")
    await bob.next_event("message")
    # Drop bob's socket from the server side (as a network failure would).
    for sock in server.world.hub.sockets():
        if sock.user == "bob":
            sock.close(1011, "test drop")
    for i in range(10):
        await alice.send_text(f"while away {i}", to="bob")
    # The SDK reconnects with backoff and resumes by sync.
    for _ in range(100):
        if bob.last_seq("dm:alice:bob") == 11:
            break
        await asyncio.sleep(0.05)
    assert [m["seq"] for m in bob.messages("dm:alice:bob")] == list(range(1, 12))


async def test_resend_after_dropped_ack_returns_original_and_stores_nothing(
    server: Harness,
) -> None:
    bob = await server.raw("bob")
    first = await server.raw("alice", "pc")
    await first.send(
        {
            "type": "send",
            "id": 1,
            "to": "bob",
            "client_msg_id": "once",
            "kind": "text",
            "body": {"text": "only once"},
        }
    )
    # Wait until it is stored, then drop the connection without reading the ack.
    store = server.world.store
    for _ in range(100):
        conv = await store.get_conversation("dm:alice:bob")
        if conv is not None and conv.last_seq == 1:
            break
        await asyncio.sleep(0.02)
    first.ws.transport.abort()

    again = await server.raw("alice", "pc")
    answer = await again.request(
        "send", to="bob", client_msg_id="once", kind="text", body={"text": "only once"}
    )
    assert answer["type"] == "result"
    assert answer["data"]["seq"] == 1 and answer["data"]["duplicate"] is True
    conv = await store.get_conversation("dm:alice:bob")
    assert conv is not None and conv.last_seq == 1
    assert len(await store.messages_after("dm:alice:bob", 0, 10)) == 1
    assert [m["seq"] for m in await messages_until_quiet(bob)] == [1]


async def test_sdk_send_retries_across_reconnect_with_same_client_msg_id(server: Harness) -> None:
    alice = await server.client("alice")
    await server.users("bob")
    ack1 = await alice.send_text("x", to="bob", client_msg_id="fixed-id")
    ack2 = await alice.send_text("x", to="bob", client_msg_id="fixed-id")
    assert (ack1.seq, ack1.duplicate) == (1, False)
    assert (ack2.seq, ack2.duplicate) == (1, True)


async def test_concurrent_senders_get_gapless_strictly_increasing_seqs(server: Harness) -> None:
    names = [f"s{i}" for i in range(10)]
    await server.users(*names)
    clients = [await server.client(n) for n in names]
    conv = (await clients[0].create_group("并发", names[1:]))["conv"]

    async def storm(i: int) -> list[int]:
        return [(await clients[i].send_text(f"{i}-{k}", conv=conv)).seq for k in range(20)]

    per_sender = await asyncio.gather(*(storm(i) for i in range(10)))
    for seqs in per_sender:
        assert seqs == sorted(seqs) and len(set(seqs)) == 20
    assert sorted(s for seqs in per_sender for s in seqs) == list(range(2, 202))
    stored = await server.world.store.messages_after(conv, 0, 1000)
    assert [m.seq for m in stored] == list(range(1, 202))
