"""Issue #11: node A's dashboard shows node B's connections, and forgets B once it is killed.

Two real ``python -m imserver serve`` processes on one PostgreSQL schema and
one Redis (tests/cluster_support.py). Clients connect to node B only; the
operator's page is served by node A, which knows B's numbers only from B's
summaries on the Redis bus. Then B is ``kill -9``'d: it says goodbye to
nobody, and A drops it once it has not been heard from for ``EXPIRE_S``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import orjson
import pytest

from imserver.dashboard.nodes import EXPIRE_S, PUBLISH_EVERY_S
from imserver_sdk import Client
from tests.cards_support import ADMIN_KEY
from tests.cluster_support import Cluster, Node
from tests.dashboard_support import DashboardHttp
from tests.redis_support import require_redis

pytestmark = pytest.mark.slow

USERS = ["alice", "bob", "carol"]


def node_id(node: Node) -> str:
    """The id a node publishes (host/pid, as the sampler names it)."""
    assert node.proc is not None
    return f"{socket.gethostname()}/{node.proc.pid}"


async def wait_for_live(
    dash: DashboardHttp, check: Any, timeout_s: float, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = await dash.get("/dashboard/api/live")
        assert status == 200, body
        if check(body):
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s} s; last answer: {body}")


def rows(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in body["nodes"]}


async def first_sse_live(dash: DashboardHttp) -> dict[str, Any]:
    """The first ``live`` event of the page's Server-Sent Events feed."""
    async with dash.session.get("/dashboard/api/stream") as r:
        assert r.status == 200
        event = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event == "live":
                data: dict[str, Any] = orjson.loads(line[len("data: ") :])
                return data
    raise AssertionError("the feed ended without a live event")


async def test_node_a_shows_node_b_until_b_is_killed() -> None:
    cluster = Cluster(2, require_redis())
    clients: list[Client] = []
    dash: DashboardHttp | None = None
    try:
        await cluster.start(USERS)
        a, b = cluster.nodes
        a_id, b_id = node_id(a), node_id(b)
        for user in USERS:  # every client on node B; node A has none
            client = Client(b.url, cluster.token(user), backoff_initial=0.05, backoff_max=0.3)
            await client.connect()
            clients.append(client)
        await clients[0].send_text("节点B上的消息", to="bob")

        dash = DashboardHttp(a.http_url)
        status, body = await dash.login(ADMIN_KEY)
        assert status == 200, body

        def b_has_three(body: dict[str, Any]) -> bool:
            row = rows(body).get(b_id)
            return row is not None and row["connections"] == 3 and row["users"] == 3

        body = await wait_for_live(dash, b_has_three, 3 * PUBLISH_EVERY_S + 5, "B's 3 sockets")
        table = rows(body)
        assert set(table) == {a_id, b_id}
        assert table[a_id]["self"] is True and table[b_id]["self"] is False
        assert table[a_id]["connections"] == 0  # A's own numbers: nobody is on A
        assert body["connections"] == 0  # the page's "this node" figure stays A's
        assert body["cluster"]["nodes"] == 2
        assert body["cluster"]["connections"] == 3
        assert body["cluster"]["users"] == 3
        assert set(table[b_id]["send_ack_ms"]) == {"p50", "p95", "p99"}
        assert table[b_id]["msgs_total"] >= 1

        live = await first_sse_live(dash)  # the feed the page listens to says the same
        assert rows(live)[b_id]["connections"] == 3
        assert live["cluster"]["connections"] == 3

        b.kill9()
        killed_at = time.monotonic()
        body = await wait_for_live(
            dash,
            lambda body: b_id not in rows(body),
            EXPIRE_S + PUBLISH_EVERY_S + 3,
            "node B gone from A's table",
        )
        gone_after = time.monotonic() - killed_at
        assert gone_after >= EXPIRE_S - PUBLISH_EVERY_S - 0.5, gone_after  # expiry, not luck
        assert set(rows(body)) == {a_id}
        assert body["cluster"] == {**body["cluster"], "nodes": 1, "connections": 0}
    finally:
        for client in clients:
            await client.close()
        if dash is not None:
            await dash.close()
        cluster.close()
