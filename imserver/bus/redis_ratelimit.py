"""One request budget per user, and one per app, across every node (``[bus] backend = "redis"``).

The budget is the same token bucket as on one node (``limits.user_requests_per_s``,
``limits.user_burst`` for users; ``cards.app_requests_per_s``, ``cards.app_burst``
for the signed requests of apps), kept in Redis by a small Lua script: one hash per key,
refilled from Redis's own clock (node clocks may disagree), one key per call
so it runs unchanged on a Redis Cluster. A token bucket rather than a fixed
``INCR`` window because it is what the single node enforces: the same burst,
the same sustained rate, and no double budget at a window's edge.

Asking Redis on every request would put a network round trip in front of
every frame. Instead this node's own bucket stays the first, free filter, and
what it lets through is *counted* and sent to Redis in one pipelined batch
every ``flush_s`` (50 ms). When the shared bucket is in debt the caller is
refused on this node until the debt is repaid at the refill rate. The cost:
a caller may overshoot the cluster budget by what they can send in one flush
interval on each node -- bounded, and self-correcting, since the overshoot is
debt that is paid back by waiting.

Redis unreachable: the local bucket alone applies (a node never refuses
everyone because Redis is down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from redis.exceptions import RedisError

from imserver.bus.redis_links import Client
from imserver.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: Key namespaces under the channel prefix: a user and an app never share a
#: bucket, whatever their ids.
USER_BUCKETS = "rl:"
APP_BUCKETS = "rl-app:"

#: KEYS[1] the bucket; ARGV rate, burst, tokens taken. Returns the
#: tokens left (negative: debt), as a string (Lua numbers become integers).
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local taken = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - at) / 1000 * rate) - taken
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(tokens)
"""


class SharedRateLimiter(RateLimiter):
    """A :class:`RateLimiter` whose budget is shared through Redis (see the module doc).

    ``buckets`` is the key namespace (``USER_BUCKETS``, ``APP_BUCKETS``): one
    limiter per kind of caller, each with its own rate and burst.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        client: Client,
        prefix: str,
        *,
        buckets: str = USER_BUCKETS,
        flush_s: float = 0.05,
    ) -> None:
        super().__init__(rate, burst)
        self._client = client
        self._prefix = prefix + buckets
        self._flush_s = flush_s
        self._counted: Counter[str] = Counter()
        self._blocked_until: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None

    def key(self, caller: str) -> str:
        """The Redis key of ``caller``'s bucket (a user id, or an app id)."""
        return f"{self._prefix}{caller}"

    def take(self, key: str, now: float) -> float:
        """0.0 if allowed; else seconds to wait -- this node's bucket first, then the cluster's."""
        until = self._blocked_until.get(key)
        if until is not None:
            if now < until:
                return until - now
            del self._blocked_until[key]
        wait = super().take(key, now)
        if wait:
            return wait
        self._counted[key] += 1
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        return 0.0

    async def _flush_loop(self) -> None:
        try:
            while self._counted:
                await asyncio.sleep(self._flush_s)
                await self.flush()
        finally:
            self._flusher = None

    async def flush(self) -> None:
        """Send what was counted since the last flush; block callers whose bucket is in debt."""
        counted, self._counted = self._counted, Counter()
        if not counted:
            return
        callers = list(counted)
        try:
            # Plain EVAL: a cluster pipeline routes it by its one key.
            async with self._client.pipeline(transaction=False) as pipe:
                for caller in callers:
                    pipe.eval(
                        TAKE_SCRIPT, 1, self.key(caller), self.rate, self.burst, counted[caller]
                    )
                left = await pipe.execute()
        except (RedisError, OSError) as e:
            log.warning("shared rate limit: redis unreachable, local budgets only: %s", e)
            return
        now = time.monotonic()
        for caller, left_tokens in zip(callers, left, strict=True):
            tokens = float(left_tokens)
            if tokens < 1.0:  # as on one node: the next request needs a whole token
                self._blocked_until[caller] = now + (1.0 - tokens) / self.rate
