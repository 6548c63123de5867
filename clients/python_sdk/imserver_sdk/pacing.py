"""Client-side pacing that keeps a client inside the server's request budget.

The server gives every user a token bucket (``limits.requests_per_s`` and
``limits.request_burst`` in the auth result, docs/protocol.md section 3.2)
and answers frames over it with ``rate_limited`` and ``retry_after_ms``. A
client that fires 200 queued sends at once after a reconnect would get most of
them refused, and if every refused request then retried on its own after the
hint, they would all collide again. So requests reserve a slot here first:
the pacer is the same bucket, kept as a "theoretical arrival time" (GCRA), and
each caller is given its own send time -- no herd, no lock. A refusal (another
device of the same user spent the shared budget) pushes every later slot past
the server's hint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["RequestPacer"]


class RequestPacer:
    """Hands out send times at ``rate`` per second with bursts of up to ``burst``.

    Unconfigured (``rate`` None, before the first auth result) it only waits
    out a :meth:`pause`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._interval = 0.0  # seconds per request; 0: no pacing
        self._tolerance = 0.0  # how far ahead of the steady rate a burst may run
        self._tat = 0.0  # theoretical arrival time of the next request
        self._not_before = 0.0  # nothing is sent before this (a refusal's hint)

    def configure(self, rate: float | None, burst: int | None) -> None:
        """Adopt the server's budget (from ``limits``); None or nonsense turns pacing off."""
        if rate is None or rate <= 0:
            self._interval = self._tolerance = 0.0
            return
        self._interval = 1.0 / rate
        self._tolerance = self._interval * max(0, (burst or 1) - 1)

    def reserve(self) -> float:
        """Take the next slot; returns how many seconds to wait before sending."""
        now = self._clock()
        earliest = max(now, self._not_before)
        if self._interval == 0.0:
            return earliest - now
        tat = max(self._tat, earliest)
        send_at = max(earliest, tat - self._tolerance)
        self._tat = tat + self._interval
        return send_at - now

    async def wait(self) -> None:
        """Reserve a slot and sleep until it comes."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    def pause(self, seconds: float) -> None:
        """The server refused us: no slot before ``seconds`` from now, then the steady rate.

        The bucket is treated as empty (no burst right after a refusal), which
        is what the server's own bucket is at that moment.
        """
        resume_at = self._clock() + max(0.0, seconds)
        self._not_before = max(self._not_before, resume_at)
        self._tat = max(self._tat, resume_at + self._tolerance)
