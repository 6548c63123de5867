"""One request budget per app across nodes (``cards.app_requests_per_s``, ``cards.app_burst``).

Two real servers on one PostgreSQL schema and the Redis bus, once on the
machine's single Redis and once on a 3-master Redis Cluster the session
starts itself. The app's signed requests alternate between the nodes; the
cluster-wide bucket decides, as one node's bucket would on a single node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from imserver.bus.redis import RedisBus
from imserver_sdk import BusinessClient, BusinessError
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, register_app
from tests.postgres_support import drop_schema, fresh_dsn
from tests.redis_support import bus_settings, fresh_prefix
from tests.support import make_test_config, start_harness, stop_harness

SECRET = "s" * 40
BURST = 4
#: Refill so slow that the test's few seconds add no whole token.
RATE = 0.2
#: Between two requests (one node each): longer than a flush (50 ms) plus its round
#: trip, so every node has heard the bucket's answer before its next request.
GAP_S = 0.15


async def test_an_apps_requests_over_two_nodes_are_refused_once_the_shared_budget_is_spent(
    tmp_path: Path, bus_target: dict[str, Any]
) -> None:
    """Per-node budgets would let 2 x 4 of the 16 requests through; one shared budget of
    4 lets through 4 plus the documented overshoot: what a node lets through before its
    next flush answer, here at most one request per node."""
    dsn, schema = fresh_dsn()
    prefix = fresh_prefix()
    shared = {
        "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "bus": {"backend": "redis", "channel_prefix": prefix, **bus_settings(bus_target)},
        "auth": {"secret": SECRET, "admin_api_key": ADMIN_KEY},
        "cards": {**CARD_SETTINGS, "app_requests_per_s": RATE, "app_burst": BURST},
    }
    a = await start_harness(make_test_config(tmp_path / "a", shared))
    b = await start_harness(make_test_config(tmp_path / "b", shared))
    stub = BusinessStub()
    await stub.start()
    clients: list[BusinessClient] = []
    try:
        await register_app(a.world.http_url, stub)  # stored: known on both nodes
        await a.users("li")
        clients = [BusinessClient(n.world.http_url, stub.app_id, stub.secret) for n in (a, b)]
        outcomes: list[tuple[int, str]] = []  # (node, "ok" or the refusal's code)
        for i in range(16):
            node = i % 2
            try:
                await clients[node].send_notice(f"通知{i}", "内容", users=["li"])
                outcomes.append((node, "ok"))
            except BusinessError as e:
                assert e.status == 429, (e.status, e.code)
                outcomes.append((node, e.code))
            await asyncio.sleep(GAP_S)
        accepted = [node for node, what in outcomes if what == "ok"]
        assert BURST <= len(accepted) <= BURST + 2, outcomes
        for node in (0, 1):  # each node refused while its own bucket still had tokens
            assert accepted.count(node) < BURST, outcomes
        assert {what for _, what in outcomes if what != "ok"} == {"rate_limited"}  # as on one node
        assert outcomes[-4:] == [(0, "rate_limited"), (1, "rate_limited")] * 2, outcomes
        bus = a.world.bus
        assert isinstance(bus, RedisBus)
        # The app's bucket, apart from every user's (``rl:``).
        assert await bus.client.exists(f"{prefix}rl-app:{stub.app_id}") == 1
        assert await bus.client.exists(f"{prefix}rl:{stub.app_id}") == 0
    finally:
        for client in clients:
            await client.close()
        await stub.stop()
        await stop_harness(a)
        await stop_harness(b)
        drop_schema(schema)
