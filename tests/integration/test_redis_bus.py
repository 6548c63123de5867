"""Two nodes, one PostgreSQL store, the Redis bus: what crosses nodes, and what survives a cut.

Every test runs twice: against the machine's single Redis and against a
3-master Redis Cluster the session starts itself (``tests/redis_support.py``).
Each test has a store schema and a channel prefix of its own. Real servers,
real WebSockets; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from imserver.bus.base import TOPIC_CONV_CHANGED
from imserver.bus.redis import RedisBus
from imserver.protocol.frames import CLOSE_REVOKED
from imserver_sdk import sign_request
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card, business
from tests.postgres_support import drop_schema, fresh_dsn
from tests.redis_support import (
    DelayingProxy,
    bus_settings,
    free_port,
    fresh_prefix,
    kill_bus_connections,
    require_redis,
)
from tests.support import Harness, RawClient, make_test_config, start_harness, stop_harness

SECRET = "s" * 40
#: Every node of a cluster shares the token secret and the field keys.
KEYS = {
    "field_keys": "k1:aes-256-gcm:" + base64.b64encode(b"k" * 32).decode(),
    "field_key_active": "k1",
    "field_index_key": base64.b64encode(b"i" * 32).decode(),
}


@dataclasses.dataclass
class Nodes:
    a: Harness
    b: Harness
    addresses: list[str]

    def bus(self, h: Harness) -> RedisBus:
        assert isinstance(h.world.bus, RedisBus)
        return h.world.bus


@pytest.fixture
async def nodes(tmp_path: Path, bus_target: dict[str, Any]) -> AsyncIterator[Nodes]:
    dsn, schema = fresh_dsn()
    bus = bus_settings(bus_target)
    shared = {
        "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "bus": {"backend": "redis", "channel_prefix": fresh_prefix(), **bus},
        "auth": {"secret": SECRET, "admin_api_key": ADMIN_KEY},
        "cards": CARD_SETTINGS,
        "security": KEYS,
    }
    a = await start_harness(make_test_config(tmp_path / "a", shared))
    b = await start_harness(make_test_config(tmp_path / "b", shared))
    try:
        yield Nodes(a, b, bus_target["_addresses"])
    finally:
        await stop_harness(a)
        await stop_harness(b)
        drop_schema(schema)


def is_event(name: str, **data: Any) -> Callable[[dict[str, Any]], bool]:
    def match(frame: dict[str, Any]) -> bool:
        if frame.get("type") != "event" or frame.get("event") != name:
            return False
        got = frame["data"]
        return all(got.get(k) == v for k, v in data.items())

    return match


def is_message(conv: str, seq: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(frame: dict[str, Any]) -> bool:
        if frame.get("type") != "event" or frame.get("event") != "message":
            return False
        msg = frame["data"]
        return bool(msg["conv"] == conv and (seq is None or msg["seq"] == seq))

    return match


async def send_text(raw: RawClient, text: str, **target: str) -> dict[str, Any]:
    answer = await raw.request(
        "send", kind="text", body={"text": text}, client_msg_id=secrets.token_hex(8), **target
    )
    assert answer["type"] == "result", answer
    data: dict[str, Any] = answer.get("data", answer)
    return data


def result(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["type"] == "result", answer
    data: dict[str, Any] = answer.get("data", answer)
    return data


async def drain(raw: RawClient, seconds: float) -> list[dict[str, Any]]:
    """Every frame that arrives within ``seconds`` (and what was already waiting)."""
    frames = list(raw.backlog)
    raw.backlog.clear()
    try:
        while True:
            frames.append(await raw._recv_wire(seconds))
    except TimeoutError:
        return frames


async def test_a_1to1_message_from_node_a_reaches_node_b(nodes: Nodes) -> None:
    await nodes.a.users("alice", "bob")
    alice = await nodes.a.raw("alice")
    bob = await nodes.b.raw("bob")
    first = await send_text(alice, "请审阅", to="bob")  # creates the conversation
    got = await bob.recv_until(is_message(first["conv"], first["seq"]))
    assert got["data"]["body"] == {"text": "请审阅"}
    second = await send_text(alice, "第二条", conv=first["conv"])
    await bob.recv_until(is_message(first["conv"], second["seq"]))
    # and back: B publishes, A delivers; the sender's own node hears it once
    reply = await send_text(bob, "收到", conv=first["conv"])
    await alice.recv_until(is_message(first["conv"], reply["seq"]))
    await bob.recv_until(is_message(first["conv"], reply["seq"]))
    frames = await drain(bob, 0.3) + await drain(alice, 0.3)
    assert not [f for f in frames if is_message(first["conv"], reply["seq"])(f)], "twice"


async def test_a_group_message_reaches_members_on_both_nodes_once(nodes: Nodes) -> None:
    await nodes.a.users("alice", "bob", "carol")
    alice = await nodes.a.raw("alice")
    bob = await nodes.b.raw("bob")
    carol = await nodes.a.raw("carol")
    created = result(await alice.request("group.create", name="科室", members=["bob", "carol"]))
    conv = created["conv"]
    await bob.recv_until(is_message(conv, 1))  # the group_created notice, on the other node
    sent = await send_text(bob, "大家好", conv=conv)
    for member in (alice, carol):
        await member.recv_until(is_message(conv, sent["seq"]))
    frames = await drain(alice, 0.3) + await drain(carol, 0.3)
    assert not [f for f in frames if is_message(conv, sent["seq"])(f)], "delivered twice"


async def test_a_card_acted_on_at_node_b_updates_the_holder_on_node_a(nodes: Nodes) -> None:
    stub = BusinessStub()
    await stub.start()
    oa = await business(nodes.a, stub)
    try:
        zhang = await nodes.a.client("zhang")
        li = await nodes.b.client("li")
        pushed = await oa.push_card(approval_card("leave-x", ["li"]), users=["zhang", "li"])
        card_id = pushed["card_id"]
        for holder in (zhang, li):  # the card message, in a new notice conversation each
            ev = await holder.next_event("message", predicate=lambda e: e.data["kind"] == "card")
            assert ev.data["body"]["card"]["card_id"] == card_id
        acted = await li.request(
            "card.act", card_id=card_id, action="approve", action_id=secrets.token_hex(8)
        )
        assert acted["state"] == "approved"
        ev = await zhang.next_event(
            "card",
            predicate=lambda e: e.data["card_id"] == card_id and e.data["state"] == "approved",
        )
        assert ev.data["decided_by"] == "li"
    finally:
        await oa.close()
        await stub.stop()


async def test_revoking_on_node_a_closes_the_socket_on_node_b(nodes: Nodes) -> None:
    await nodes.a.users("alice")
    on_b = await nodes.b.raw("alice", device="phone")
    await nodes.a.world.identity.revoke("admin", "alice", "phone", reason="lost phone")
    assert await on_b.expect_close() == CLOSE_REVOKED


async def test_presence_crosses_nodes(nodes: Nodes) -> None:
    await nodes.a.users("alice", "bob")
    bob = await nodes.b.raw("bob")
    answer = result(await bob.request("presence.subscribe", users=["alice"]))
    assert answer["online"] == {"alice": False}
    alice = await nodes.a.raw("alice")
    await bob.recv_until(is_event("presence", user="alice", online=True))
    # presence.query on B knows of the session on A
    assert result(await bob.request("presence.query", users=["alice"]))["online"] == {"alice": True}
    # a second device on B, then A's closes: still online in the cluster -- no offline event
    alice_b = await nodes.b.raw("alice", device="phone")
    await alice_b.request("ping")  # answered once the session is registered (after auth)
    await alice.close()
    frames = await drain(bob, 0.5)
    assert not [f for f in frames if is_event("presence", user="alice", online=False)(f)]
    assert result(await bob.request("presence.query", users=["alice"]))["online"] == {"alice": True}
    await alice_b.close()
    await bob.recv_until(is_event("presence", user="alice", online=False))
    assert result(await bob.request("presence.query", users=["alice"]))["online"] == {
        "alice": False
    }


async def test_a_member_added_on_node_a_hears_the_group_on_node_b(nodes: Nodes) -> None:
    await nodes.a.users("alice", "bob", "dave")
    alice = await nodes.a.raw("alice")
    dave = await nodes.b.raw("dave")  # B has no interest in the group yet
    conv = result(await alice.request("group.create", name="项目组", members=["bob"]))["conv"]
    added = result(await alice.request("group.add", conv=conv, members=["dave"]))
    assert added["added"] == ["dave"]
    notice = await dave.recv_until(is_message(conv))
    assert notice["data"]["kind"] != "text"
    sent = await send_text(alice, "欢迎", conv=conv)
    await dave.recv_until(is_message(conv, sent["seq"]))
    # removal crosses too: B's membership cache is dropped, dave may no longer send
    result(await alice.request("group.remove", conv=conv, members=["dave"]))
    await dave.recv_until(lambda f: is_message(conv)(f) and f["data"]["seq"] > sent["seq"])
    refused = await dave.request(
        "send", conv=conv, kind="text", body={"text": "x"}, client_msg_id="late"
    )
    assert refused["type"] == "error" and refused["code"] == "not_member", refused


async def test_messages_published_while_node_b_is_cut_arrive_after_reconnect_once(
    nodes: Nodes,
) -> None:
    await nodes.a.users("alice", "bob")
    alice = await nodes.a.raw("alice")
    bob = await nodes.b.raw("bob")
    first = await send_text(alice, "before", to="bob")
    conv = first["conv"]
    await bob.recv_until(is_message(conv, first["seq"]))
    bus_b = nodes.bus(nodes.b)
    # A slow first reconnect, so the sends below surely fall into the cut.
    bus_b.settings = dataclasses.replace(bus_b.settings, reconnect_initial_s=1.0)
    assert kill_bus_connections(nodes.addresses, bus_b.settings.node_name) >= 1
    while bus_b.connected:  # noqa: ASYNC110 - the bus has no event for this; poll briefly
        await asyncio.sleep(0.005)
    during = [await send_text(alice, f"during {i}", conv=conv) for i in range(3)]
    health = await healthz(nodes.b)
    assert health["status"] == "degraded" and health["bus"]["connected"] is False
    assert bus_b.reconnects == 0, "reconnected before the sends: the test proves nothing"
    await bob.recv_until(is_event("resync", reason="bus_reconnected"), timeout=10)
    frames = await drain(bob, 1.0)  # with what came before the resync event (backlog)
    for sent in during:
        copies = [f for f in frames if is_message(conv, sent["seq"])(f)]
        assert len(copies) == 1, f"seq {sent['seq']} delivered {len(copies)} times"
    after = await send_text(alice, "after", conv=conv)
    await bob.recv_until(is_message(conv, after["seq"]))
    assert bus_b.reconnects == 1


async def healthz(node: Harness) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(node.world.http_url + "/healthz") as response,
    ):
        assert response.status == 200  # degraded too: the node still serves its users
        body: dict[str, Any] = await response.json()
        return body


async def test_healthz_reports_the_bus(nodes: Nodes) -> None:
    body = await healthz(nodes.a)
    assert body["status"] == "ok"
    assert body["bus"]["backend"] == "redis" and body["bus"]["connected"] is True


async def test_the_request_budget_is_shared_by_both_nodes(
    tmp_path: Path, bus_target: dict[str, Any]
) -> None:
    """4 requests on A use up a burst of 4: B refuses soon after, though its own bucket is full."""
    dsn, schema = fresh_dsn()
    bus = bus_settings(bus_target)
    shared = {
        "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "bus": {"backend": "redis", "channel_prefix": fresh_prefix(), **bus},
        "auth": {"secret": SECRET},
        "limits": {"user_requests_per_s": 0.2, "user_burst": 4},
    }
    a = await start_harness(make_test_config(tmp_path / "a", shared))
    b = await start_harness(make_test_config(tmp_path / "b", shared))
    try:
        await a.users("alice")
        on_a = await a.raw("alice")  # auth is request 1 of the burst
        for _ in range(3):
            assert (await on_a.request("ping"))["type"] == "pong"
        await asyncio.sleep(0.3)  # A's counts reach Redis (every 50 ms)
        on_b = await b.raw("alice", device="phone")  # B's own bucket: 4 tokens, 1 used
        answers = []
        for _ in range(3):
            answers.append(await on_b.request("ping"))
            await asyncio.sleep(0.2)
        refused = [f for f in answers if f["type"] == "error"]
        assert refused, answers
        assert all(f["code"] == "rate_limited" for f in refused)
    finally:
        await stop_harness(a)
        await stop_harness(b)
        drop_schema(schema)


async def test_a_node_listens_to_a_conversation_only_while_a_local_member_is_online(
    nodes: Nodes,
) -> None:
    await nodes.a.users("alice", "bob")
    alice = await nodes.a.raw("alice")
    bob = await nodes.b.raw("bob")
    conv = (await send_text(alice, "hi", to="bob"))["conv"]
    await bob.recv_until(is_message(conv, 1))
    bus_b = nodes.bus(nodes.b)
    channel = f"{bus_b.settings.prefix}c:{conv}"
    assert channel in bus_b._channels
    bus_b.settings = dataclasses.replace(bus_b.settings, linger_s=0.05)
    await bob.close()
    for _ in range(200):
        if channel not in bus_b._channels:
            break
        await asyncio.sleep(0.01)
    assert channel not in bus_b._channels, "still subscribed with no local member"
    assert bus_b.health()["conversations"] == 0
    # and back: the next session subscribes again and gets what follows
    bob = await nodes.b.raw("bob", device="d2")
    await bob.request("ping")  # the session is registered (and subscribed) once this answers
    sent = await send_text(alice, "again", conv=conv)
    await bob.recv_until(is_message(conv, sent["seq"]))


async def test_a_conversation_created_while_the_member_logs_in_elsewhere_is_delivered(
    nodes: Nodes,
) -> None:
    """Node b reads bob's conversations at login; alice's new one is announced before
    bob is known on b. The announcement must not be lost in that gap."""
    await nodes.a.users("alice", "bob")
    alice = await nodes.a.raw("alice")
    bus_b = nodes.bus(nodes.b)
    announced = asyncio.Event()
    bus_b.subscribe(TOPIC_CONV_CHANGED, lambda payload: announced.set())
    store = bus_b._store
    read_bob = store.conversations_of
    reading = asyncio.Event()

    async def slow_read(user: str) -> Any:
        """The real read, held until the new conversation was announced (after it)."""
        convs = await read_bob(user)
        if user == "bob":
            reading.set()
            await announced.wait()
        return convs

    store.conversations_of = slow_read  # type: ignore[method-assign]
    try:
        bob = await nodes.b.raw("bob")
        await asyncio.wait_for(reading.wait(), 5)
        conv = (await send_text(alice, "hi", to="bob"))["conv"]
        await bob.recv_until(is_message(conv, 1))
        sent = await send_text(alice, "and live", conv=conv)
        await bob.recv_until(is_message(conv, sent["seq"]))
    finally:
        store.conversations_of = read_bob  # type: ignore[method-assign]


async def test_a_conversation_created_while_a_reconnect_rereads_a_member_stays_subscribed(
    nodes: Nodes,
) -> None:
    """After a cut, node b re-reads bob's conversations. One created during that read is
    subscribed by its announcement; the stale read must not unsubscribe it again."""
    await nodes.a.users("alice", "bob")
    alice = await nodes.a.raw("alice")
    bob = await nodes.b.raw("bob")
    await bob.request("ping")  # registered on b's bus
    bus_b = nodes.bus(nodes.b)
    bus_b.settings = dataclasses.replace(bus_b.settings, linger_s=0.05)
    store = bus_b._store
    real_read = store.conversations_of
    reading, release, reread = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_read(user: str) -> Any:
        """The reconnect's re-read of bob: the real read, returned only once released."""
        convs = await real_read(user)
        if user == "bob" and not reread.is_set():
            reading.set()
            await release.wait()
            reread.set()
        return convs

    store.conversations_of = held_read  # type: ignore[method-assign]
    try:
        assert kill_bus_connections(nodes.addresses, bus_b.settings.node_name) >= 1
        await asyncio.wait_for(reading.wait(), 10)
        conv = (await send_text(alice, "hi", to="bob"))["conv"]
        await bob.recv_until(is_message(conv, 1), timeout=10)  # by the announcement
        release.set()
        await asyncio.wait_for(reread.wait(), 5)
        await asyncio.sleep(0.3)  # the stale re-read is applied (and any linger has run)
        assert f"{bus_b.settings.prefix}c:{conv}" in bus_b._channels, "unsubscribed by the re-read"
        sent = await send_text(alice, "still live", conv=conv)
        await bob.recv_until(is_message(conv, sent["seq"]))
    finally:
        store.conversations_of = real_read  # type: ignore[method-assign]


async def test_card_messages_missed_during_a_cut_are_filled_with_their_view(nodes: Nodes) -> None:
    """A card message is filled with the card's view (masked); a conversation created during
    the cut is subscribed after the reconnect, so what follows arrives live."""
    stub = BusinessStub()
    await stub.start()
    oa = await business(nodes.a, stub)
    try:
        await nodes.a.users("li", "wang")
        li = await nodes.b.raw("li")
        wang = await nodes.b.raw("wang")
        await oa.push_card(approval_card("t-1", ["li"]), users=["li"])
        first = await li.recv_until(lambda f: is_message("n:oa:li", 1)(f))
        assert first["data"]["kind"] == "card"
        bus_b = nodes.bus(nodes.b)
        bus_b.settings = dataclasses.replace(bus_b.settings, reconnect_initial_s=4.0)
        assert kill_bus_connections(nodes.addresses, bus_b.settings.node_name) >= 1
        while bus_b.connected:  # noqa: ASYNC110 - the bus has no event for this; poll briefly
            await asyncio.sleep(0.005)
        second = await oa.push_card(approval_card("t-2", ["li"]), users=["li"])
        await oa.push_card(approval_card("w-1", ["wang"]), users=["wang"])  # new conversation
        assert bus_b.reconnects == 0, "reconnected before the pushes: the test proves nothing"
        filled = await li.recv_until(is_message("n:oa:li", 2), timeout=10)
        view = filled["data"]["body"]["card"]
        assert view["card_id"] == second["card_id"]
        assert view["fields"][1]["value"] == "138****1234"  # the masked view, as live
        await wang.recv_until(is_event("resync", reason="bus_reconnected"), timeout=10)
        for _ in range(200):  # the reconnect re-reads wang's conversations
            if f"{bus_b.settings.prefix}c:n:oa:wang" in bus_b._channels:
                break
            await asyncio.sleep(0.01)
        await oa.push_card(approval_card("w-2", ["wang"]), users=["wang"])
        await wang.recv_until(is_message("n:oa:wang", 2))
    finally:
        await oa.close()
        await stub.stop()


async def test_a_signed_app_request_replayed_through_the_other_node_is_refused(
    nodes: Nodes,
) -> None:
    stub = BusinessStub()
    await stub.start()
    oa = await business(nodes.a, stub)  # registered in the shared store: known on both
    try:
        await nodes.a.users("li")
        body = orjson.dumps({"card": approval_card("once", ["li"]), "to": {"users": ["li"]}})
        headers = sign_request(stub.app_id, stub.secret, body)
        answers = []
        for node in (nodes.a, nodes.b):
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{node.world.http_url}/api/v1/apps/cards", data=body, headers=headers
                ) as r,
            ):
                answers.append((r.status, await r.json(content_type=None)))
        assert answers[0][0] == 201, answers[0]
        status, err = answers[1]
        assert (status, err["error"]["code"]) == (401, "nonce_replayed")
    finally:
        await oa.close()
        await stub.stop()


async def test_a_malformed_publication_is_dropped_without_breaking_the_link(nodes: Nodes) -> None:
    await nodes.a.users("alice", "bob")
    alice = await nodes.a.raw("alice")
    bob = await nodes.b.raw("bob")
    bus_b = nodes.bus(nodes.b)
    prefix = bus_b.settings.prefix
    for channel, data in (
        (f"{prefix}ctl", b"not json"),
        (f"{prefix}ctl", b'{"no": "topic"}'),
        (f"{prefix}c:dm:alice:bob", b'{"seq": "x"}'),
        (f"{prefix}presence", b"[]"),
    ):
        await bus_b.client.spublish(channel, data)
    sent = await send_text(alice, "still fine", to="bob")
    await bob.recv_until(is_message(sent["conv"], sent["seq"]))
    assert bus_b.reconnects == 0 and bus_b.connected


async def test_the_message_right_after_a_new_conversations_first_reaches_the_other_node(
    nodes: Nodes,
) -> None:
    """Node B subscribes to a new conversation when it hears of it, then reads the store.

    Seq 2 follows seq 1 at once, often before B's subscription is in place:
    B may read the store only once Redis has confirmed the subscription, else
    seq 2 is neither in what B read nor heard by it.
    """
    users = [f"u{i:02d}" for i in range(15)]
    await nodes.a.users("alice", *users)
    alice = await nodes.a.raw("alice")
    peers = [await nodes.b.raw(u) for u in users]
    sent = []
    for user in users:
        first = await send_text(alice, "1", to=user)
        second = await send_text(alice, "2", conv=first["conv"])
        sent.append((first["conv"], second["seq"]))
    for peer, (conv, seq) in zip(peers, sent, strict=True):
        await peer.recv_until(is_message(conv, seq), timeout=3)


async def test_a_node_reads_the_store_only_after_redis_confirmed_its_subscription(
    tmp_path: Path,
) -> None:
    """B's commands reach Redis 0.3 s late. B hears of a new 1:1 at once, subscribes, and
    must not read the store before Redis has the subscription: seq 2, sent 0.1 s after
    seq 1, is published before B's SSUBSCRIBE is processed, so only the store has it."""
    url = require_redis()
    port = int(url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0].rsplit(":", 1)[1])
    proxy = DelayingProxy(port, delay_s=0.3)
    await proxy.start()
    dsn, schema = fresh_dsn()
    prefix = fresh_prefix()
    shared: dict[str, dict[str, Any]] = {
        "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "bus": {"backend": "redis", "channel_prefix": prefix, "redis_url": url},
        "auth": {"secret": SECRET},
    }
    # A hang fails here with the await it hung on (not pytest-timeout's bare select).
    async with asyncio.timeout(60):
        a = await start_harness(make_test_config(tmp_path / "a", shared))
        slow = {
            **shared,
            "bus": {**shared["bus"], "redis_url": f"redis://127.0.0.1:{proxy.port}/0"},
        }
        b = await start_harness(make_test_config(tmp_path / "b", slow))
        try:
            await a.users("alice", "bob")
            alice = await a.raw("alice")
            bob = await b.raw("bob")
            await bob.request("ping")  # bob's session is registered on B
            first = await send_text(alice, "1", to="bob")
            await asyncio.sleep(0.1)
            second = await send_text(alice, "2", conv=first["conv"])
            await bob.recv_until(is_message(first["conv"], first["seq"]), timeout=5)
            await bob.recv_until(is_message(first["conv"], second["seq"]), timeout=5)
        finally:
            await stop_harness(a)
            await stop_harness(b)
            await proxy.stop()
            drop_schema(schema)


def test_serve_with_an_unreachable_redis_exits_5_with_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = tmp_path / "bus.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path}"\nws_port = 0\nhttp_port = 0\n'
        f'[bus]\nbackend = "redis"\nredis_url = "redis://:sekret@127.0.0.1:{port}/0"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "imserver", "serve", "--config", str(cfg)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 5, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith(
        f"error: bus_unavailable: cannot reach the Redis bus at redis://127.0.0.1:{port}/0"
    )
    assert "Traceback" not in out.stderr
    assert "sekret" not in out.stderr


async def test_a_card_to_many_is_one_message_on_every_node(nodes: Nodes) -> None:
    """A broadcast (>= cards.broadcast_min_holders, 100 by default) crosses nodes as one
    publication of one stored message; the next card to the same people is its seq 2."""
    stub = BusinessStub()
    await stub.start()
    oa = await business(nodes.a, stub)
    people = [f"m{i:03d}" for i in range(100)]
    try:
        await nodes.a.users(*people)
        here = await nodes.a.client("m000")
        there = [await nodes.b.client(u) for u in ("m001", "m099")]
        first = await oa.push_card(approval_card("many-1", ["m001"]), users=people)
        second = await oa.push_card(approval_card("many-2", ["m001"]), users=people)
        for holder in (here, *there):
            got = []
            for pushed in (first, second):
                ev = await holder.next_event(
                    "message",
                    predicate=lambda e, c=pushed["card_id"]: (
                        e.data["kind"] == "card" and e.data["body"]["card_id"] == c
                    ),
                )
                got.append((ev.data["conv"], ev.data["seq"]))
            assert got[0][0].startswith("b:oa:") and [s for _, s in got] == [1, 2]
            assert got[0][0] == got[1][0]
        acted = await there[0].request(
            "card.act", card_id=first["card_id"], action="approve", action_id=secrets.token_hex(8)
        )
        assert acted["state"] == "approved"
        ev = await here.next_event(
            "card",
            predicate=lambda e: (
                e.data["card_id"] == first["card_id"] and e.data["state"] == "approved"
            ),
        )
        assert ev.data["decided_by"] == "m001"
    finally:
        await oa.close()
        await stub.stop()
