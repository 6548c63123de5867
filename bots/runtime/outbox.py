"""Deliver what the store holds: card operations to the server, forwards to the business system.

Each lane of each bot has one worker task. An item is retried with jittered
exponential backoff until it succeeds; only a card operation the server
refuses outright (a 4xx that a retry cannot change) is parked as ``failed``.
Both sides are idempotent, so a delivery repeated after a crash is harmless:
a push carries the derived ``out_track_id`` (the server answers ``duplicate``)
and a forward carries ``Idempotency-Key: <action_id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bots.runtime.store import CARD_LANE, FORWARD_LANE, BotStore, OutboxItem
from imserver_sdk import BusinessClient, BusinessError, sign_request

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Server refusals worth retrying (overload); any other 4xx is permanent, except
#: ``no_such_card`` for an update, which may have overtaken the push of its card.
_RETRY_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did: ``done``, ``retry``, ``failed`` (permanent), or
    ``recorded`` (a timer whose handler already stored its outcome)."""

    kind: str
    result: dict[str, Any] | None = None
    error: str = ""
    status: int = 0
    code: str = ""


async def perform_card_op(client: BusinessClient, op: dict[str, Any]) -> Outcome:
    """One attempt of a card operation (``push`` or ``update``) against the server."""
    try:
        if op["op"] == "push" and op.get("units"):
            to = {"users": op["users"], "groups": op["groups"], "units": op["units"]}
            res = await client.request("POST", "/api/v1/apps/cards", {"card": op["card"], "to": to})
        elif op["op"] == "push":
            res = await client.push_card(op["card"], users=op["users"], groups=op["groups"])
        elif op["op"] == "notice":
            res = await client.send_notice(
                op["title"], op["text"], users=op["users"], urgent=op["urgent"]
            )
        else:
            res = await client.update_card(op["out_track_id"], **op["changes"])
    except BusinessError as e:
        overtaken = op["op"] == "update" and e.code == "no_such_card"
        if e.status >= 500 or e.status in _RETRY_STATUSES or overtaken:
            return Outcome("retry", error=str(e), status=e.status, code=e.code)
        return Outcome("failed", error=str(e), status=e.status, code=e.code, result=e.body)
    except (aiohttp.ClientError, TimeoutError) as e:
        return Outcome("retry", error=f"{type(e).__name__}: {e}")
    return Outcome("done", result=res)


async def perform_forward(
    session: aiohttp.ClientSession, url: str, bot: str, secret: str, item: OutboxItem
) -> Outcome:
    """POST one decision to the business system, signed, with its idempotency key."""
    body = json.dumps(item.op, ensure_ascii=False, separators=(",", ":")).encode()
    headers = sign_request(bot, secret, body)
    headers["Content-Type"] = "application/json"
    headers[IDEMPOTENCY_HEADER] = item.key
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return Outcome("done", status=resp.status)
            return Outcome("retry", error=f"HTTP {resp.status}", status=resp.status)
    except (aiohttp.ClientError, TimeoutError) as e:
        return Outcome("retry", error=f"{type(e).__name__}: {e}")


class LaneWorker:
    """Runs one lane of one bot until stopped; :meth:`wake` after enqueueing."""

    def __init__(
        self,
        store: BotStore,
        bot: str,
        lane: str,
        attempt: Callable[[OutboxItem], Awaitable[Outcome]],
        *,
        backoff_initial_s: float,
        backoff_max_s: float,
        idle_poll_s: float = 1.0,
    ) -> None:
        assert lane in (CARD_LANE, FORWARD_LANE)
        self.store, self.bot, self.lane = store, bot, lane
        self._attempt = attempt
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: full-jitter half, capped."""
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(attempts, 30))
        return float(delay * random.uniform(0.5, 1.0))

    async def run(self) -> None:
        while True:
            # Cleared before reading the queue: a wake() after this point is not lost.
            self._wake.clear()
            for item in self.store.due(self.bot, self.lane):
                await self.deliver(item)
            await self._sleep_until_due()

    async def deliver(self, item: OutboxItem) -> Outcome:
        """Attempt one item and record the outcome (also used by the webhook inline)."""
        outcome = await self._attempt(item)
        if outcome.kind == "recorded":
            return outcome
        if outcome.kind == "done":
            self.store.mark_done(item.id, outcome.result)
        elif outcome.kind == "failed":
            log.error(
                "bot %s: %s %s refused for good: %s", self.bot, self.lane, item.key, outcome.error
            )
            self.store.mark_failed(item.id, outcome.error)
        else:
            delay = self.backoff(item.attempts)
            log.warning(
                "bot %s: %s %s attempt %d failed (%s); retry in %.1fs",
                self.bot, self.lane, item.key, item.attempts + 1, outcome.error, delay,
            )  # fmt: skip
            self.store.mark_retry(item.id, time.time() + delay, outcome.error)
        return outcome

    async def attempt_only(self, op: dict[str, Any]) -> Outcome:
        """One attempt of an operation that is not in the store (withdrawing a card)."""
        return await self._attempt(OutboxItem(0, self.bot, self.lane, "", op, 0))

    async def _sleep_until_due(self) -> None:
        nxt = self.store.next_due_at(self.bot, self.lane)
        timeout = self.idle_poll_s if nxt is None else min(self.idle_poll_s, nxt - time.time())
        if timeout <= 0:
            return
        # A timeout means the next item is due, or the idle poll came round.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
