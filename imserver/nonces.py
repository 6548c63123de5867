"""Where signed app requests' nonces are remembered, so a request is accepted once.

A signed request stays acceptable until its own ``timestamp + window``; its
nonce must be remembered exactly that long (docs/cards.md section 2). The
verifier (``imserver.appauth``) computes that moment and hands it to a
:class:`NonceStore`; the store never needs to know the window.

Two implementations: :class:`MemoryNonceStore` (one node, the default) here,
and ``imserver.redis_nonces.RedisNonceStore`` for several nodes behind one
balancer, where a replay may reach any of them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Protocol

from imserver.errors import NonceStoreUnavailable

DEFAULT_MAX_ENTRIES = 1_000_000


class NonceStore(Protocol):
    async def remember(self, app_id: str, nonce: str, expires_at_ms: int) -> bool:
        """Record ``nonce`` of ``app_id`` until ``expires_at_ms``; False if already held.

        Check and record are one step, so two concurrent copies of a request
        cannot both be accepted.
        """
        ...


class MemoryNonceStore:
    """Nonces in this process's memory, each kept until its own expiry.

    Bounded: expired entries are dropped first; if ``max_entries`` unexpired
    nonces are still held, the request is refused with ``nonce_store_unavailable``
    (503) rather than forgetting a nonce that could still be replayed. Only
    requests with a valid signature reach the store, so only registered apps
    can fill it, and the app rate limit bounds how fast.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._expiry: dict[tuple[str, str], int] = {}
        # Min-heap of (expiry, key): timestamps may arrive out of order (skew
        # is allowed both ways), so insertion order says nothing about expiry.
        self._heap: list[tuple[int, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    async def remember(self, app_id: str, nonce: str, expires_at_ms: int) -> bool:
        now_ms = int(self._clock() * 1000)
        self._drop_expired(now_ms)
        key = (app_id, nonce)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self._max:
            raise NonceStoreUnavailable(
                f"{self._max} unexpired request nonces are held; try again shortly",
                details={"retry_after_ms": max(1, self._heap[0][0] - now_ms)},
            )
        self._expiry[key] = expires_at_ms
        heapq.heappush(self._heap, (expires_at_ms, key))
        return True

    def _drop_expired(self, now_ms: int) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now_ms:
            _, key = heapq.heappop(heap)
            del expiry[key]  # one heap entry per held key: a held key is never re-added
