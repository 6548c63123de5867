"""Pull a bot's business events from a feed, for systems that cannot call out.

Every ``interval_s`` the poller GETs ``<url>?after=<cursor>&limit=<n>``, signed
like a webhook event but in the other direction (the bot signs, the business
system checks; body ``b""``), and expects ``{"events": [...], "cursor": "..."}``.
Each event takes the webhook's path (``parse_event`` and
``BotEndpoints.prepare``); a page's new events and the next cursor are stored
in one transaction, so a ``kill -9`` re-reads at most one page, whose events
are then repeats by ``event_id``. A refused event cannot be answered, so it is
logged, counted and skipped. A feed that is down or answers nonsense is
retried with backoff; the poller never stops the runtime.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bots.runtime.config import BotConfig, PollConfig
from bots.runtime.model import BotEvent, EventRejected
from bots.runtime.webhook import BotEndpoints, parse_event
from imserver_sdk import sign_request

log = logging.getLogger(__name__)


class FeedError(Exception):
    """The feed could not be read (unreachable, non-2xx, not the page JSON)."""


@dataclass(slots=True)
class PollStats:
    """What /healthz shows of a poller (counters since the process started)."""

    pages: int = 0
    accepted: int = 0
    refused: int = 0
    feed_errors: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "accepted": self.accepted,
            "refused": self.refused,
            "feed_errors": self.feed_errors,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of the feed: the entries as sent, and the cursor after them."""

    entries: list[Any]
    cursor: str


def parse_page(raw: bytes) -> Page:
    """The feed's answer → :class:`Page`, or FeedError saying what is wrong."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise FeedError(f"the feed's answer is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise FeedError("the feed's answer must be a JSON object")
    entries, cursor = doc.get("events"), doc.get("cursor")
    if not isinstance(entries, list):
        raise FeedError("the feed's answer needs an 'events' list")
    if not isinstance(cursor, str) or not cursor:
        raise FeedError("the feed's answer needs a non-empty string 'cursor'")
    return Page(entries, cursor)


class Poller:
    """Polls one bot's feed until cancelled; events go to that bot's endpoints."""

    def __init__(
        self,
        cfg: BotConfig,
        poll: PollConfig,
        endpoints: BotEndpoints,
        session: aiohttp.ClientSession,
        *,
        backoff_max_s: float,
    ) -> None:
        self.cfg, self.poll, self.endpoints, self.session = cfg, poll, endpoints, session
        self.backoff_max_s = max(backoff_max_s, poll.interval_s)
        self.stats = PollStats()
        self.bot, self.lane = cfg.name, "poll"  # named like a LaneWorker in the logs

    async def run(self) -> None:
        """Poll forever: at once again after a full page, after ``interval_s`` otherwise."""
        failures = 0
        while True:
            try:
                full = await self.poll_once()
            except FeedError as e:
                failures += 1
                self.stats.feed_errors += 1
                self.stats.last_error = str(e)[:500]
                delay = self._backoff(failures)
                log.warning("bot %s: feed %s: %s; next try in %.1f s",
                            self.cfg.name, self.poll.url, e, delay)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            failures = 0
            if not full:
                await asyncio.sleep(self.poll.interval_s)

    def _backoff(self, failures: int) -> float:
        """``interval_s`` doubled per failure in a row, capped, jittered."""
        delay = min(self.backoff_max_s, self.poll.interval_s * 2.0 ** min(failures - 1, 30))
        return float(delay * random.uniform(0.5, 1.0))

    async def poll_once(self) -> bool:
        """Read and store one page; True if it was full (more may be waiting)."""
        name = self.cfg.name
        before = self.endpoints.store.poll_cursor(name)
        page = parse_page(await self._fetch(before))
        events: list[BotEvent] = []
        now = time.time()
        for i, entry in enumerate(page.entries):
            try:
                events.append(parse_event(entry, now))
            except EventRejected as e:
                self._refused(entry.get("event_id") if isinstance(entry, dict) else f"#{i}", e)
        store = self.endpoints.store
        accepted, refused = store.accept_page(name, events, self.endpoints.prepare, page.cursor)
        for event_id, refusal in refused:
            self._refused(event_id, refusal)
        self.stats.pages += 1
        self.stats.accepted += len(accepted)
        if accepted:
            self.endpoints.card_worker.wake()
        # A full page whose cursor did not move would be read again at once, forever.
        return len(page.entries) >= self.poll.page_size and page.cursor != before

    def _refused(self, event_id: Any, e: EventRejected) -> None:
        self.stats.refused += 1
        where = f" ({e.field})" if e.field else ""
        log.error("bot %s: polled event %r refused and skipped: %s%s",
                  self.cfg.name, event_id, e, where)  # fmt: skip

    async def _fetch(self, cursor: str | None) -> bytes:
        params = {"limit": str(self.poll.page_size)}
        if cursor is not None:
            params["after"] = cursor
        headers = sign_request(self.cfg.name, self.poll.secret, b"")
        limit = self.cfg.max_event_bytes * self.poll.page_size + 64 * 1024
        try:
            async with self.session.get(self.poll.url, params=params, headers=headers) as resp:
                if not 200 <= resp.status < 300:
                    raise FeedError(f"HTTP {resp.status}")
                chunks: list[bytes] = []
                size = 0
                while chunk := await resp.content.read(65536):
                    size += len(chunk)
                    if size > limit:
                        raise FeedError(f"the page is larger than {limit} bytes")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise FeedError(f"{type(e).__name__}: {e}") from e
        return b"".join(chunks)
