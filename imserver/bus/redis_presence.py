"""Who is online anywhere in the cluster (``presence.query``), kept in Redis.

One sorted set per user, ``{prefix}o:{user}``: a member per node where the
user has a session, scored with the time (ms) the entry expires. A node adds
itself when a user's first local session opens, removes itself when the last
one closes, and re-stamps all its users every ``refresh_s``; an entry older
than ``ttl_s`` is ignored, so a node that died without cleaning up stops
counting within ``ttl_s``. One key per user keeps every command on one
cluster slot. The *events* (online/offline as they happen) go over the bus;
this answers the question "is X online now?" for a user on another node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from imserver.bus.redis_links import Client

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisPresence:
    def __init__(
        self,
        client: Client,
        prefix: str,
        node: str,
        *,
        ttl_s: float = 60.0,
        refresh_s: float = 20.0,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._node = node
        self._ttl_ms = int(ttl_s * 1000)
        self._refresh_s = refresh_s
        self._clock = clock

    def key(self, user: str) -> str:
        return f"{self._prefix}o:{user}"

    async def mark(self, user: str, online: bool) -> None:
        """This node gained its first / lost its last session of ``user``."""
        try:
            if online:
                await self._client.zadd(self.key(user), {self._node: self._clock() + self._ttl_ms})
            else:
                await self._client.zrem(self.key(user), self._node)
        except (RedisError, OSError) as e:  # the refresh after the reconnect repairs it
            log.warning("presence directory: %s", e)

    async def refresh(self, users: Iterable[str]) -> None:
        """Re-stamp every local user (pipelined): they are still here."""
        expires = self._clock() + self._ttl_ms
        async with self._client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zadd(self.key(user), {self._node: expires})
                pipe.pexpire(self.key(user), self._ttl_ms * 2)
            await pipe.execute()

    async def run(self, local_users: Callable[[], list[str]]) -> None:
        """Refresh forever (a task of the bus)."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh(local_users())
            except (RedisError, OSError) as e:
                log.warning("presence directory refresh failed: %s", e)

    async def online(self, users: Iterable[str]) -> dict[str, bool]:
        """``presence.query`` across nodes: any unexpired entry means online."""
        names = list(users)
        if not names:
            return {}
        now = self._clock()
        async with self._client.pipeline(transaction=False) as pipe:
            for user in names:
                pipe.zcount(self.key(user), now, "+inf")
            counts = await pipe.execute()
        return {user: int(n) > 0 for user, n in zip(names, counts, strict=True)}
