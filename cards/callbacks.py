"""Delivering accepted actions to business systems: the callback outbox.

Every accepted action was written to the ``outbox`` table in the same
transaction as the card's new state. This dispatcher claims due entries
(with a lease, so two workers never send the same one at once), POSTs them
signed to the app's ``callback_url``, and records the outcome: 2xx →
delivered (and the answer's ``card_update`` applied); anything else → retried
with exponential backoff and jitter until the attempt budget runs out, then
marked failed on the card and counted. Because the outbox is in the database,
a restart loses nothing: pending entries are simply claimed again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import orjson

from cards.app_events import EVENT
from cards.service import CardService, FullStore
from cards.stream import NO_STREAM, StreamRegistry, park_ms
from imserver.appauth import sign_headers
from imserver.config import CardsConfig
from imserver.due_loop import DueLoop
from imserver.errors import ImError
from imserver.metrics import Metrics
from imserver.request_context import HEADER as REQUEST_ID_HEADER
from imserver.request_context import set_request_id
from imserver.store.records import OutboxItem

log = logging.getLogger(__name__)

BATCH = 64
#: How long a stop waits for sends in flight before cutting them off.
STOP_GRACE_S: Final = 1.0
STOPPED: Final = "node stopped mid-send; given back to the outbox"


def backoff_ms(attempts: int, initial_s: float, max_s: float, rng: random.Random) -> int:
    """Exponential backoff with "equal jitter": a delay drawn from [base/2, base].

    ``base`` doubles each attempt up to ``max_s``; at least half the base is
    kept, so retries never bunch up right after a failure.
    """
    base = min(max_s, initial_s * 2 ** max(0, attempts - 1))
    return int(1000 * rng.uniform(base / 2, base))


def _app_gone(item: OutboxItem) -> str:
    """The error recorded for a callback whose app was deleted (docs/admin.md "Apps")."""
    return f"app {item.app_id} no longer exists"


class CallbackDispatcher:
    def __init__(
        self,
        store: FullStore,
        cards: CardService,
        config: CardsConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._cards = cards
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._rng = random.Random()
        self._loop = DueLoop("callbacks", self.run_once, store.next_callback_due, clock)
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        #: Claimed items not yet answered (waiting for a slot, or mid-POST / stream
        #: frame): the claims a stop gives back.
        self._unsettled: dict[int, OutboxItem] = {}
        self._slots = asyncio.Semaphore(config.callback_concurrency)
        # Not configurable on its own: a claim must outlast the POST it covers
        # (``callback_timeout_s``), and 10 s more absorbs a slow store write after it.
        self._lease_ms = int((config.callback_timeout_s + 10) * 1000)
        #: This node's app streams (stream mode): preferred over the callback URL.
        self.streams = StreamRegistry(metrics, on_connect=self.wake)

    def wake(self) -> None:
        self._loop.wake()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.callback_timeout_s),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        self._loop.start()

    async def stop(self) -> None:
        """Stop claiming; give sends in flight ``STOP_GRACE_S`` to finish, then give back
        the claims of those cut off, so another node (or this one restarted) sends them
        at once instead of after the lease (``callback_timeout_s`` + 10 s).

        A send cut off mid-POST may have reached the business system: sending it
        again is the at-least-once delivery callbacks already have (one
        ``action_id``, docs/cards.md section 6).
        """
        await self._loop.stop()
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=STOP_GRACE_S)
        for t in list(self._inflight):
            t.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        cut_off, self._unsettled = list(self._unsettled.values()), {}
        now = int(self._clock() * 1000)
        for item in cut_off:
            try:
                await self._store.finish_callback(
                    item.id, state="pending", attempts=item.attempts, next_at=now, error=STOPPED
                )
            except ImError as e:  # the store is going too: the lease runs out instead
                log.warning("callback %s: claim not given back at stop: %s", item.id, e)
        if cut_off:
            log.info("stop: %d callback(s) cut off mid-send given back to the outbox", len(cut_off))
        if self._session is not None:
            await self._session.close()

    async def run_once(self) -> int:
        """Claim due callbacks and start sending them; returns how many."""
        now = int(self._clock() * 1000)
        items = await self._store.claim_callbacks(now, self._lease_ms, BATCH)
        if items:
            self._metrics.callback_batch.observe(len(items))
        for item in items:
            self._unsettled[item.id] = item
            task = asyncio.get_running_loop().create_task(self._deliver(item))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(items)

    async def _deliver(self, item: OutboxItem) -> None:
        # The request that caused the decision: this delivery logs (and sends) its id.
        request_id = item.payload.get("request_id")
        set_request_id(request_id if isinstance(request_id, str) else None)
        async with self._slots:
            started = time.perf_counter()
            outcome, answer = await self._post(item)
            self._unsettled.pop(item.id, None)  # answered: settled below, not given back
            self._metrics.callback_post.observe(time.perf_counter() - started)
        app_gone = outcome == _app_gone(item)
        attempts = item.attempts + 1
        now = int(self._clock() * 1000)
        if outcome == NO_STREAM:  # stream-only app, its stream is elsewhere: not an attempt
            await self._store.finish_callback(
                item.id,
                state="pending",
                attempts=item.attempts,
                next_at=now + park_ms(self._rng),
                error=outcome,
            )
            self._metrics.callbacks.labels("parked").inc()
            self.wake()
            return
        if outcome == "":
            await self._store.finish_callback(
                item.id, state="delivered", attempts=attempts, next_at=now, error=""
            )
            if self._counted_event(item, "delivered"):
                return  # an event's answer carries no card_update (docs/cards.md "App events")
            self._metrics.callbacks.labels("delivered").inc()
            acted_at = item.payload.get("at")
            if isinstance(acted_at, int):  # the decision's time (ms): act -> delivered
                self._metrics.card_act_delivered.observe(max(0.0, self._clock() - acted_at / 1000))
            log.info(
                "callback %s/%s delivered to app %s after %d attempt(s)",
                item.card_id,
                item.action_id,
                item.app_id,
                attempts,
                extra={"card_id": item.card_id, "action_id": item.action_id, "app_id": item.app_id},
            )
            await self._after_delivery(item, answer)
            return
        # A deleted app cannot come back with its callbacks' secret: no point retrying.
        if attempts >= self._config.callback_max_attempts or app_gone:
            log.warning(
                "callback %s/%s to app %s failed for good after %d attempts: %s",
                item.card_id,
                item.action_id,
                item.app_id,
                attempts,
                outcome,
            )
            await self._store.finish_callback(
                item.id, state="failed", attempts=attempts, next_at=now, error=outcome
            )
            if self._counted_event(item, "failed"):
                return  # the card's callback status is about its action callbacks only
            self._metrics.callbacks_failed.inc()
            self._metrics.callbacks.labels("failed").inc()
            await self._cards.set_callback_state(item.card_id, "failed")
            return
        delay = backoff_ms(
            attempts,
            self._config.callback_backoff_initial_s,
            self._config.callback_backoff_max_s,
            self._rng,
        )
        if not self._counted_event(item, "retry"):
            self._metrics.callbacks.labels("retry").inc()
        await self._store.finish_callback(
            item.id, state="pending", attempts=attempts, next_at=now + delay, error=outcome
        )
        self.wake()

    def _counted_event(self, item: OutboxItem, outcome: str) -> bool:
        """Count an app event's ``outcome`` apart from the action callbacks; False for those."""
        if item.kind != EVENT:
            return False
        self._metrics.app_events.labels(str(item.payload.get("event")), outcome).inc()
        return True

    async def _post(self, item: OutboxItem) -> tuple[str, dict[str, Any] | None]:
        """('', answer) on 2xx, else (reason, None)."""
        app = await self._store.get_app(item.app_id)
        if app is None:
            return _app_gone(item), None
        sent = await self.streams.deliver(app, item, self._clock(), self._config.callback_timeout_s)
        if sent is not None:  # over the app's stream: the ack is the 2xx
            return sent
        if not app.callback_url:
            return NO_STREAM, None
        body = orjson.dumps(item.payload)
        headers = sign_headers(app.app_id, app.secret, body, now=self._clock())
        headers["Content-Type"] = "application/json"
        headers["X-Imserver-Action-Id"] = item.action_id
        request_id = item.payload.get("request_id")
        if isinstance(request_id, str):  # the HTTP request that caused this decision
            headers[REQUEST_ID_HEADER] = request_id
        assert self._session is not None
        try:
            async with self._session.post(app.callback_url, data=body, headers=headers) as resp:
                raw = await resp.read()
                if not 200 <= resp.status < 300:
                    return f"HTTP {resp.status}", None
        except TimeoutError:
            return f"timeout after {self._config.callback_timeout_s} s", None
        except aiohttp.ClientError as e:
            return f"{type(e).__name__}: {e}"[:300], None
        try:
            answer = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            answer = None  # a 2xx with a non-JSON body still acknowledges delivery
        return "", answer if isinstance(answer, dict) else None

    async def _after_delivery(self, item: OutboxItem, answer: dict[str, Any] | None) -> None:
        """Apply the answer's ``card_update`` (one new version), then settle the status.

        Without an update, "delivered" is recorded at the decision's version
        (``callback_settled``): the app's ``if_version`` from the callback stays valid.
        """
        card = await self._store.get_card(item.card_id)
        if card is None:
            return
        update = answer.get("card_update") if answer else None
        if update is not None:
            state = "pending" if await self._store.pending_callbacks(card.id) else "ok"
            try:
                await self._cards.apply_update(card, update, check_version=False, callback=state)
            except ImError as e:
                log.warning(
                    "app %s answered callback %s with an invalid card_update: %s",
                    item.app_id,
                    item.action_id,
                    e.message,
                )
                self._metrics.callbacks.labels("bad_update").inc()
        # After an update this is a no-op, unless an action landed meanwhile.
        await self._cards.callback_settled(card.id)
