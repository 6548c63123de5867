"""The nonce stores: each nonce held until its own expiry; memory bounded; Redis shared.

The Redis tests use the real server on 127.0.0.1:6379 under a key prefix of
their own, and delete what they wrote.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imserver.appauth import nonce_expiry_ms
from imserver.errors import NonceStoreUnavailable
from imserver.nonces import MemoryNonceStore
from imserver.redis_nonces import RedisNonceStore

T0 = 1_764_400_000.0
T0_MS = int(T0 * 1000)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_nonce_lives_until_its_own_timestamp_plus_window() -> None:
    # Signed 9 s ahead with a 10 s window: acceptable until ts + 10, so held as long.
    assert nonce_expiry_ms(int(T0) + 9, 10.0) == T0_MS + 19_000
    assert nonce_expiry_ms(int(T0), 0.0015) == T0_MS + 2  # rounded up, never down


async def test_memory_store_holds_each_nonce_until_its_expiry() -> None:
    clock = Clock()
    store = MemoryNonceStore(clock=clock)
    assert await store.remember("oa", "n-ahead", T0_MS + 19_000) is True
    assert await store.remember("oa", "n-now", T0_MS + 10_000) is True
    assert await store.remember("oa", "n-ahead", T0_MS + 19_000) is False
    assert await store.remember("hr", "n-ahead", T0_MS + 19_000) is True  # per app
    clock.now = T0 + 11.5  # a receipt-based window would have forgotten both by now
    assert await store.remember("oa", "n-ahead", T0_MS + 19_000) is False
    assert await store.remember("oa", "n-now", T0_MS + 21_500) is True  # n-now expired
    clock.now = T0 + 19.0  # the expiry instant itself: gone
    assert await store.remember("oa", "n-ahead", T0_MS + 29_000) is True


async def test_memory_store_refuses_rather_than_forgets_when_full() -> None:
    clock = Clock()
    store = MemoryNonceStore(max_entries=2, clock=clock)
    assert await store.remember("oa", "late", T0_MS + 30_000) is True
    assert await store.remember("oa", "soon", T0_MS + 5_000) is True
    with pytest.raises(NonceStoreUnavailable) as info:
        await store.remember("oa", "third", T0_MS + 30_000)
    assert info.value.code == "nonce_store_unavailable" and info.value.http_status == 503
    assert info.value.details == {"retry_after_ms": 5_000}
    assert await store.remember("oa", "soon", T0_MS + 5_000) is False  # nothing was forgotten
    clock.now = T0 + 5  # "soon" expired (out of insertion order): room again
    assert await store.remember("oa", "third", T0_MS + 30_000) is True
    assert len(store) == 2


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        await client.ping()
    except RedisError as e:
        await client.aclose()
        pytest.fail(
            f"Redis is not reachable on 127.0.0.1:6379 ({e}); start it with"
            " `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''"
            " --appendonly no` (Debian package: redis-server)"
        )
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A key prefix for this test run only; its keys are deleted afterwards."""
    name = f"imserver-test:{secrets.token_hex(8)}:nonce:"
    yield name
    keys = [k async for k in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


async def test_redis_store_sets_each_nonce_once_with_its_absolute_expiry(
    redis: Redis, prefix: str
) -> None:
    store = RedisNonceStore(redis, prefix=prefix)
    expires = int((await redis.time())[0]) * 1000 + 60_000
    assert await store.remember("oa", "n1", expires) is True
    assert await store.remember("oa", "n1", expires) is False
    assert await store.remember("hr", "n1", expires) is True
    assert store.key("oa", "n1") == f"{prefix}oa:n1"
    assert await redis.pexpiretime(f"{prefix}oa:n1") == expires  # PXAT: absolute, exact


async def test_redis_store_is_shared_between_nodes_and_forgets_after_expiry(
    redis: Redis, prefix: str
) -> None:
    node_a = RedisNonceStore(redis, prefix=prefix)
    other_client = Redis(host="127.0.0.1", port=6379)
    node_b = RedisNonceStore(other_client, prefix=prefix)
    try:
        seconds, micros = await redis.time()
        soon = seconds * 1000 + micros // 1000 + 300
        assert await node_a.remember("oa", "n2", soon) is True
        assert await node_b.remember("oa", "n2", soon) is False  # a replay on another node
        await asyncio.sleep(0.45)
        assert await node_b.remember("oa", "n2", soon + 60_000) is True
    finally:
        await other_client.aclose()


async def test_redis_store_unreachable_refuses_with_a_stable_code() -> None:
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    try:
        with pytest.raises(NonceStoreUnavailable) as info:
            await RedisNonceStore(client).remember("oa", "n3", T0_MS)
        assert info.value.code == "nonce_store_unavailable"
        assert "6379" not in info.value.message and "port" not in info.value.message
    finally:
        await client.aclose()
