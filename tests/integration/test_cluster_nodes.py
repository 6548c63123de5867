"""Issue #9: three real server processes on PostgreSQL + Redis, and losing parts of them.

Each test starts three ``python -m imserver serve`` nodes (tests/cluster_support.py)
sharing one PostgreSQL schema, one Redis channel prefix, one token secret and
one set of field keys, and spreads SDK clients over them the way a load
balancer would. What is proved is what docs/cluster.md promises: traffic
crosses nodes; a ``kill -9``'d node's clients resume elsewhere with nothing
acked lost or doubled and its callback leases and timers taken over; a Redis
restart and a PostgreSQL outage lose nothing acked; a race of approvers on
three nodes decides a card exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imserver_sdk import BusinessClient, Client, ClientClosed, ServerError
from tests.cards_support import approval_card, register_app
from tests.cluster_support import Cluster, HoldingStub, Node, RedisServer, terminate_backends
from tests.redis_support import require_redis

pytestmark = pytest.mark.slow


@pytest.fixture
async def stub() -> AsyncIterator[HoldingStub]:
    s = HoldingStub()
    await s.start()
    yield s
    s.release.set()
    await s.stop()


class Clients:
    """Every SDK client a test opened, closed at the end whatever happened."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.opened: list[Client] = []

    async def on(self, node: Node, user: str, **kwargs: Any) -> Client:
        kwargs.setdefault("backoff_initial", 0.05)
        kwargs.setdefault("backoff_max", 0.3)
        kwargs.setdefault("request_timeout", 5.0)
        client = Client(node.url, self.cluster.token(user), **kwargs)
        self.opened.append(client)
        await client.connect()
        return client

    async def close(self) -> None:
        for client in self.opened:
            await client.close()


async def start_cluster(users: list[str], redis_url: str | None = None) -> Cluster:
    cluster = Cluster(3, redis_url or require_redis())
    try:
        await cluster.start(users)
    except BaseException:
        cluster.close()
        raise
    return cluster


def app_on(node: Node, stub: HoldingStub) -> BusinessClient:
    """The business system's client, sending its signed requests to ``node``."""
    return BusinessClient(node.http_url, stub.app_id, stub.secret)


def is_card(event: Any) -> bool:
    return bool(event.data.get("kind") == "card")


async def test_traffic_reaches_users_on_the_other_nodes(stub: HoldingStub) -> None:
    cluster = await start_cluster(["alice", "bob", "carol"])
    clients = Clients(cluster)
    n0, n1, n2 = cluster.nodes
    try:
        alice = await clients.on(n0, "alice")
        bob = await clients.on(n1, "bob")
        carol = await clients.on(n2, "carol")

        direct = await alice.send_text("请审阅", to="bob")  # 1:1, node 0 → node 1
        got = await bob.next_event("message", predicate=lambda e: e.data["seq"] == direct.seq)
        assert got.data["body"] == {"text": "请审阅"}

        conv = (await alice.create_group("科室", ["bob", "carol"]))["conv"]
        said = await bob.send_text("大家好", conv=conv)  # group, node 1 → nodes 0 and 2
        for member in (alice, carol):
            ev = await member.next_event(
                "message", predicate=lambda e: e.data["conv"] == conv and e.data["seq"] == said.seq
            )
            assert ev.data["body"] == {"text": "大家好"}

        # A card pushed by signed HTTP to node 0 reaches holders on nodes 1 and 2,
        # and bob's decision on node 1 reaches carol's view on node 2.
        await register_app(n0.http_url, stub)
        async with app_on(n0, stub) as oa:
            pushed = await oa.push_card(approval_card("c-1", ["bob"]), users=["bob", "carol"])
        for holder in (bob, carol):
            ev = await holder.next_event("message", predicate=is_card)
            assert ev.data["body"]["card"]["card_id"] == pushed["card_id"]
        acted = await bob.request(
            "card.act", card_id=pushed["card_id"], action="approve", action_id=uuid.uuid4().hex
        )
        assert acted["state"] == "approved"
        view = await carol.next_event(
            "card", predicate=lambda e: e.data["state"] == "approved", timeout=5
        )
        assert view.data["decided_by"] == "bob"

        # DING from node 0; confirmed on node 2; the sender on node 0 hears it.
        urgent = await alice.send_text("紧急：18:00 前确认到岗", conv=conv, urgent=True)
        ev = await carol.next_event(
            "message", predicate=lambda e: e.data["conv"] == conv and e.data["seq"] == urgent.seq
        )
        assert ev.data["body"]["urgent"] is True
        await carol.confirm_ding(conv, urgent.seq)
        confirmed = await alice.next_event("ding_confirmed", timeout=5)
        assert confirmed.data == {"conv": conv, "seq": urgent.seq, "user": "carol"}
    finally:
        await clients.close()
        cluster.close()


PER_SENDER = 80  # 480 sends in the node-loss storm
Acked = dict[str, tuple[str, int]]  # client_msg_id -> (conv, seq) from the ack


async def storm(
    client: Client,
    sender: str,
    group: str,
    peer: str,
    count: int,
    acked: Acked,
    failed: dict[str, str],
    pause_s: float = 0.0,
) -> None:
    """``count`` sends into ``group`` (every fifth one 1:1 to ``peer``), acks recorded.

    The SDK resends a send whose connection died with the same
    ``client_msg_id``; what still fails is recorded with its error code.
    """
    for k in range(count):
        cmid = f"{sender}-{k}"
        direct = k % 5 == 4
        try:
            ack = await client.send_text(
                f"storm {cmid}",
                client_msg_id=cmid,
                conv=None if direct else group,
                to=peer if direct else None,
            )
        except ServerError as e:
            failed[cmid] = e.code
            continue
        except (ClientClosed, TimeoutError) as e:
            failed[cmid] = type(e).__name__
            continue
        acked[cmid] = (ack.conv, ack.seq)
        if pause_s:
            await asyncio.sleep(pause_s)


async def assert_every_member_holds_each_acked_once(
    cluster: Cluster, nodes: list[Node], users: list[str], acked: Acked
) -> None:
    """Each user, freshly synced on a live node, holds every acked message of theirs once."""
    convs = {conv for conv, _ in acked.values()}
    for i, user in enumerate(users):
        node = nodes[i % len(nodes)]
        reader = Client(node.url, cluster.token(user, "audit"), reconnect=False)
        await reader.connect()  # sync pages everything
        try:
            for conv in convs:
                held = reader.messages(conv)
                if not held:
                    continue  # a 1:1 this user is not in
                seqs = [m["seq"] for m in held]
                assert seqs == list(range(1, len(seqs) + 1)), f"{user}: gap in {conv}: {seqs}"
                by_cmid: dict[str, list[int]] = {}
                for m in held:
                    if m.get("client_msg_id"):
                        by_cmid.setdefault(m["client_msg_id"], []).append(m["seq"])
                for cmid, (acked_conv, seq) in acked.items():
                    if acked_conv == conv:
                        assert by_cmid.get(cmid) == [seq], (
                            f"{user}: acked {cmid} is {by_cmid.get(cmid)}"
                        )
        finally:
            await reader.close()


async def test_kill_9_of_a_node_mid_storm_loses_and_doubles_nothing(stub: HoldingStub) -> None:
    users = [f"u{i}" for i in range(6)]  # u0,u1 on node 0; u2,u3 on node 1; u4,u5 on node 2
    cluster = await start_cluster([*users, "boss"])
    clients = Clients(cluster)
    n0, n1, doomed = cluster.nodes
    try:
        boss = await clients.on(n0, "boss")
        storm_clients = [await clients.on(cluster.nodes[i // 2], u) for i, u in enumerate(users)]
        group = (await storm_clients[0].create_group("抗压", users[1:]))["conv"]

        acked: Acked = {}
        failed: dict[str, str] = {}
        tasks = [
            asyncio.create_task(
                storm(c, users[i], group, users[(i + 1) % 6], PER_SENDER, acked, failed)
            )
            for i, c in enumerate(storm_clients)
        ]
        for _ in range(400):  # mid-storm: about a fifth acked
            if len(acked) >= 100:
                break
            await asyncio.sleep(0.01)
        # Mid-storm, on the doomed node: a deadline timer due after it is gone, and a
        # callback whose POST the stub holds open, so the node dies holding its lease.
        await register_app(n1.http_url, stub)  # stored: every node knows the app
        async with app_on(n0, stub) as oa:
            pushed = await oa.push_card(approval_card("lease", ["u4"]), users=["u4"])
        due = int((time.time() + 2.5) * 1000)
        async with app_on(doomed, stub) as oa_doomed:
            late = await oa_doomed.push_card(
                approval_card("late", ["u5"], due_at=due, escalate_to="boss"), users=["u5"]
            )
        assert doomed.proc is not None
        stub.hold_from_pid = doomed.proc.pid  # the lease taken over must be the dead node's
        stub.hold_next = True
        action_id = uuid.uuid4().hex
        await storm_clients[4].request(
            "card.act", card_id=pushed["card_id"], action="approve", action_id=action_id
        )
        await asyncio.wait_for(stub.held.wait(), 10)
        # Each refusal is an attempt; 6 are allowed, and the take-over needs two more.
        assert len(stub.refused_for_hold) <= 3, f"refused senders: {stub.refused_for_hold}"
        acked_before_kill = len(acked)
        killed_at = time.monotonic()
        assert time.time() * 1000 < due, "the timer fell due before its node was killed"
        doomed.kill9()
        storm_clients[4].url, storm_clients[5].url = n0.url, n1.url  # as a load balancer would
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert not failed, f"sends not acked after the failover: {failed}"
        assert len(acked) == 6 * PER_SENDER
        assert acked_before_kill < 6 * PER_SENDER, "the kill came after the storm"

        await assert_every_member_holds_each_acked_once(cluster, [n0, n1], users, acked)

        # The timer fired on a survivor: boss (node 0) got the escalated card.
        escalated = await boss.next_event("message", predicate=is_card, timeout=15)
        assert escalated.data["body"]["card"]["card_id"] == late["card_id"]

        # The held callback's lease ran out; a survivor delivered it, exactly once.
        for _ in range(250):
            if action_id in stub.action_ids:
                break
            await asyncio.sleep(0.1)
        delivered_after = time.monotonic() - killed_at
        assert stub.action_ids.count(action_id) == 1, f"callback deliveries: {stub.action_ids}"
        await asyncio.sleep(1.0)  # a second delivery would come within a retry interval
        assert stub.action_ids.count(action_id) == 1, f"callback sent twice: {stub.action_ids}"
        assert delivered_after > 5, "delivered before the dead node's lease ran out?"
    finally:
        await clients.close()
        cluster.close()


async def test_twenty_approvers_on_three_nodes_decide_a_card_once(stub: HoldingStub) -> None:
    names = [f"r{i:02d}" for i in range(20)]
    cluster = await start_cluster(names)
    clients = Clients(cluster)
    try:
        approvers = [await clients.on(cluster.nodes[i % 3], n) for i, n in enumerate(names)]
        await register_app(cluster.nodes[0].http_url, stub)
        async with app_on(cluster.nodes[1], stub) as oa:
            card_id = (await oa.push_card(approval_card("race", names), users=names))["card_id"]

        async def press(client: Client) -> dict[str, Any] | ServerError:
            try:
                return await client.request(
                    "card.act", card_id=card_id, action="approve", action_id=uuid.uuid4().hex
                )
            except ServerError as e:
                return e

        results = await asyncio.gather(*(press(c) for c in approvers))
        wins = [r for r in results if isinstance(r, dict)]
        losses = [r for r in results if isinstance(r, ServerError)]
        assert len(wins) == 1 and len(losses) == 19, results
        winner = wins[0]["decided_by"]
        for loss in losses:
            assert (loss.code, dict(loss.details or {})) == (
                "card_decided",
                {"decided_by": winner},
            ), loss
        for _ in range(100):
            if stub.action_ids:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a second callback, from any node, would come by now
        assert len(stub.action_ids) == 1, f"callbacks: {stub.action_ids}"
        assert stub.actions[-1].actor == winner
    finally:
        await clients.close()
        cluster.close()


async def test_postgres_connections_dropped_mid_traffic_lose_nothing_acked() -> None:
    users = ["p0", "p1", "p2"]
    cluster = await start_cluster(users)
    clients = Clients(cluster)
    try:
        senders = [await clients.on(cluster.nodes[i], u) for i, u in enumerate(users)]
        group = (await senders[0].create_group("断库", users[1:]))["conv"]
        acked: Acked = {}
        refused: dict[str, str] = {}
        outage_over = asyncio.Event()

        async def keep_sending(i: int) -> None:
            k = 0
            while not outage_over.is_set() or k < 5:
                cmid = f"{users[i]}-{k}"
                k += 1
                try:
                    ack = await senders[i].send_text(cmid, conv=group, client_msg_id=cmid)
                except ServerError as e:
                    refused[cmid] = e.code
                    await asyncio.sleep(0.02)
                    continue
                acked[cmid] = (ack.conv, ack.seq)

        tasks = [asyncio.create_task(keep_sending(i)) for i in range(3)]
        await asyncio.sleep(0.3)
        # ~2 s of every connection to the test database being killed, over and over.
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.0
        terminated = 0
        while loop.time() < until:
            terminated += await terminate_backends(cluster.dsn)
            await asyncio.sleep(0.05)
        outage_over.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert terminated > 0, "no store connection was dropped"
        assert refused, "no send was refused while the store connections were dropped"
        assert set(refused.values()) == {"store_unavailable"}, f"unstable codes: {refused}"

        # Service resumed by itself: a fresh send on every node is acked.
        for i, sender in enumerate(senders):
            ack = await sender.send_text("恢复", conv=group, client_msg_id=f"after-{i}")
            acked[f"after-{i}"] = (ack.conv, ack.seq)
        await assert_every_member_holds_each_acked_once(cluster, cluster.nodes, users, acked)
    finally:
        await clients.close()
        cluster.close()


async def test_a_redis_restart_mid_traffic_loses_no_message() -> None:
    redis_server = RedisServer()  # its own port: the shared 6379 stays untouched
    redis_server.start()
    try:
        await redis_server.wait_ready()
        users = [f"q{i}" for i in range(6)]
        cluster = await start_cluster(users, redis_server.url)
        clients = Clients(cluster)
        try:
            members = [await clients.on(cluster.nodes[i % 3], u) for i, u in enumerate(users)]
            group = (await members[0].create_group("重启", users[1:]))["conv"]
            acked: Acked = {}
            failed: dict[str, str] = {}
            tasks = [
                asyncio.create_task(
                    storm(c, users[i], group, users[(i + 1) % 6], 60, acked, failed, 0.02)
                )
                for i, c in enumerate(members)
            ]
            for _ in range(400):
                if len(acked) >= 60:
                    break
                await asyncio.sleep(0.01)
            redis_server.kill9()
            await asyncio.sleep(0.3)
            acked_while_down = len(acked)
            redis_server.start()  # same port
            await redis_server.wait_ready()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            assert not failed, f"sends failed around the Redis restart: {failed}"
            assert acked_while_down < 360, "Redis came back after the traffic ended"

            # Every member ends up holding every message of its conversations, pushed
            # or fetched by the resync the node asked for after its reconnect.
            expected: dict[str, set[tuple[str, int]]] = {u: set() for u in users}
            for cmid, (conv, seq) in acked.items():
                sender = cmid.split("-")[0]
                k = int(cmid.split("-")[1])
                if conv == group:
                    audience = users
                else:
                    audience = [sender, users[(users.index(sender) + 1) % 6]]
                    assert k % 5 == 4
                for user in audience:
                    expected[user].add((conv, seq))
            for user, client in zip(users, members, strict=True):
                missing: set[tuple[str, int]] = set()
                for _ in range(100):
                    held = {
                        (conv, m["seq"])
                        for conv in {c for c, _ in expected[user]}
                        for m in client.messages(conv)
                    }
                    missing = expected[user] - held
                    if not missing:
                        break
                    await asyncio.sleep(0.1)
                assert not missing, f"{user} never got {sorted(missing)[:5]}"
            for node in cluster.nodes:  # each node did lose Redis and came back
                bus = (await node.healthz())["bus"]
                assert bus["connected"] is True and bus["reconnects"] >= 1, bus
        finally:
            await clients.close()
            cluster.close()
    finally:
        redis_server.kill9()
