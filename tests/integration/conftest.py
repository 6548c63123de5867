"""Fixtures for integration tests: a business system on loopback and a server that
knows it; the Redis targets (one Redis, a Redis Cluster) the bus tests run on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, business
from tests.redis_support import RedisCluster, require_redis, started_cluster
from tests.support import Harness


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on free loopback ports, for the whole session."""
    yield from started_cluster()


@pytest.fixture(params=["redis", "cluster"])
def bus_target(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``[bus]`` settings for one Redis or for the test cluster.

    Keys starting with ``_`` are not settings: ``_addresses`` are the Redis
    servers' ``host:port`` (for ``CLIENT KILL``); drop them with :func:`bus_settings`.
    """
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return {"redis_cluster_nodes": cluster.nodes, "_addresses": cluster.nodes}
    url = require_redis()
    address = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    return {"redis_url": url, "_addresses": [address]}


@pytest.fixture
async def stub() -> AsyncIterator[BusinessStub]:
    """A running business-system stub (callbacks verified by the SDK)."""
    s = BusinessStub()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def card_server(start_server: Any) -> Harness:
    """A server with the admin API on and fast callback retries."""
    server: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    return server


@pytest.fixture
async def oa(card_server: Harness, stub: BusinessStub) -> AsyncIterator[BusinessClient]:
    """The business client of app "oa", registered with ``card_server``."""
    client = await business(card_server, stub)
    yield client
    await client.close()
