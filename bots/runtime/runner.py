"""The composition root of the bot runtime: config → store, clients, workers, web app.

Tests build the same thing in-process (``BotRuntime(cfg)``); ``python -m bots
run`` builds it from ``bots.toml`` and runs it until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from typing import Any

import aiohttp
from aiohttp import web

from bots.runtime.config import BotConfig, RuntimeConfig
from bots.runtime.model import Bot
from bots.runtime.outbox import LaneWorker, perform_card_op, perform_forward
from bots.runtime.poller import Poller
from bots.runtime.store import CARD_LANE, FORWARD_LANE, BotStore, OutboxItem
from bots.runtime.webhook import BotEndpoints, json_answer
from imserver_sdk import BusinessClient, callback_handler

log = logging.getLogger(__name__)


def load_bot_class(path: str) -> type[Bot]:
    """``"bots.oa:OABot"`` → the class; it must subclass :class:`Bot`."""
    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not isinstance(cls, type) or not issubclass(cls, Bot):
        raise ValueError(f"{path} is not a subclass of bots.runtime.Bot")
    return cls


class BotRuntime:
    """Every configured bot behind one aiohttp server, with one SQLite store."""

    def __init__(self, cfg: RuntimeConfig) -> None:
        self.cfg = cfg
        self.store = BotStore(cfg.store)
        self.endpoints: dict[str, BotEndpoints] = {}
        self.pollers: dict[str, Poller] = {}
        self._clients: list[BusinessClient] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.port = cfg.port

    def _build_bot(self, bc: BotConfig, session: aiohttp.ClientSession) -> BotEndpoints:
        bot = load_bot_class(bc.bot_class)(bc.name, bc.options)
        # retries=0: the outbox owns retrying, with its own durable backoff.
        client = BusinessClient(self.cfg.server_url, bc.app_id, bc.app_secret, retries=0)
        self._clients.append(client)

        endpoints: list[BotEndpoints] = []  # set below; timers need the bot's endpoints

        async def card_op(item: OutboxItem) -> Any:
            if item.op.get("op") == "timer":
                return await endpoints[0].fire_timer(item)
            return await perform_card_op(client, item.op)

        async def forward(item: OutboxItem) -> Any:
            return await perform_forward(session, bc.forward_url, bc.name, bc.event_secret, item)

        backoff = {
            "backoff_initial_s": self.cfg.backoff_initial_s,
            "backoff_max_s": self.cfg.backoff_max_s,
        }
        card_worker = LaneWorker(self.store, bc.name, CARD_LANE, card_op, **backoff)
        forward_worker = LaneWorker(self.store, bc.name, FORWARD_LANE, forward, **backoff)
        ep = BotEndpoints(
            bc,
            bot,
            self.store,
            card_worker,
            forward_worker,
            signature_window_s=self.cfg.signature_window_s,
            inline_push_timeout_s=self.cfg.inline_push_timeout_s,
        )
        endpoints.append(ep)
        return ep

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application()
        for bc in self.cfg.bots:
            ep = self._build_bot(bc, self._session)
            self.endpoints[bc.name] = ep
            app.router.add_post(f"/bots/{bc.name}/events", ep.handle_event)
            app.router.add_post(
                f"/bots/{bc.name}/callback", callback_handler(bc.app_secret, ep.on_callback)
            )
            for worker in (ep.card_worker, ep.forward_worker):
                self._tasks.append(asyncio.create_task(self._keep_running(worker)))
            if bc.poll is not None:
                poller = Poller(
                    bc, bc.poll, ep, self._session, backoff_max_s=self.cfg.backoff_max_s
                )
                self.pollers[bc.name] = poller
                self._tasks.append(asyncio.create_task(self._keep_running(poller)))
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("bots %s listening on %s:%d", sorted(self.endpoints), self.cfg.host, self.port)

    async def _keep_running(self, worker: LaneWorker | Poller) -> None:
        """A worker or poller that crashes on a bug is logged and restarted, never lost."""
        while True:
            try:
                await worker.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bot %s: %s worker crashed; restarting", worker.bot, worker.lane)
                await asyncio.sleep(1.0)

    async def _healthz(self, request: web.Request) -> web.Response:
        """Outbox counts per bot, and ``poll`` counters where a bot polls a feed."""
        bots: dict[str, Any] = {n: self.store.counts(n) for n in self.endpoints}
        polls = {n: p.stats.as_dict() for n, p in self.pollers.items()}
        return json_answer({"bots": bots, **({"poll": polls} if polls else {})})

    def url(self, bot: str, what: str) -> str:
        """``http://host:port/bots/<bot>/<events|callback>``."""
        return f"http://{self.cfg.host}:{self.port}/bots/{bot}/{what}"

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._runner is not None:
            await self._runner.cleanup()
        for c in self._clients:
            await c.close()
        if self._session is not None:
            await self._session.close()
        self.store.close()


async def run_until_signalled(cfg: RuntimeConfig) -> None:
    """Run the runtime until SIGTERM or SIGINT, then stop cleanly."""
    runtime = BotRuntime(cfg)
    await runtime.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runtime.stop()
