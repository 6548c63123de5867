"""A background loop that runs work when it may be due.

Callbacks, card deadlines and DING re-notifications all keep their schedule
in the store (so restarts lose nothing) and need the same driver: run a round,
ask the store when the next item is due, sleep until then (at most
``max_sleep_s``, so items scheduled by another node are noticed) or until
woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class DueLoop:
    def __init__(
        self,
        name: str,
        run_once: Callable[[], Awaitable[object]],
        next_due_ms: Callable[[], Awaitable[int | None]],
        clock: Callable[[], float] = time.time,
        max_sleep_s: float = 1.0,
    ) -> None:
        self._name = name
        self._run_once = run_once
        self._next_due_ms = next_due_ms
        self._clock = clock
        self._max_sleep = max_sleep_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Run a round now (e.g. new work was just stored)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._run_once()
                due = await self._next_due_ms()
            except Exception:  # a store hiccup must not stop the loop for good
                log.exception("%s: round failed", self._name)
                due = None
            now = self._clock() * 1000
            delay = self._max_sleep if due is None else (due - now) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(self._max_sleep, delay)))
