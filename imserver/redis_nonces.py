"""Request nonces in Redis, shared by every node (the multi-node nonce store).

One ``SET key 1 NX PXAT expires_at`` per request: Redis checks and records in
one step (so concurrent copies of a request on two nodes cannot both pass)
and drops the key itself when the request's own ``timestamp + window`` is
over. Keys are ``{prefix}{app}:{nonce}`` with the default prefix
``imserver:nonce:``; app ids and nonces contain no ``:`` of their own
(``APP_ID_RE``, ``NONCE_RE``), so keys cannot collide.

Used when ``[bus] backend = "redis"`` (on the bus's connection, keys
``{channel_prefix}nonce:...``); ``build_world(config, nonce_store=...)`` can
still pass another.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from imserver.errors import NonceStoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "imserver:nonce:"


class RedisNonceStore:
    def __init__(self, redis: Redis | RedisCluster, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = redis
        self._prefix = prefix

    def key(self, app_id: str, nonce: str) -> str:
        return f"{self._prefix}{app_id}:{nonce}"

    async def remember(self, app_id: str, nonce: str, expires_at_ms: int) -> bool:
        """True if the nonce is new (and now held until ``expires_at_ms``).

        Redis unreachable: the request is refused (503), never let through
        unrecorded.
        """
        try:
            stored = await self._redis.set(
                self.key(app_id, nonce), b"1", nx=True, pxat=expires_at_ms
            )
        except RedisError as e:
            log.warning("redis nonce store failed: %s", e)  # details for operators only
            raise NonceStoreUnavailable("the nonce store is unreachable; try again shortly") from e
        return bool(stored)
