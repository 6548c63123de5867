"""The polling event source: a bot pulls OA events from a feed, no webhook call at all.

Everything is real and on loopback: the imserver server, the bot runtime
(in-process, and as a ``kill -9``-able ``python -m bots run``), a stub feed
(aiohttp) that checks the bot's signature on every GET, the simulated OA
system receiving decisions, and users on the SDK's WebSocket client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bots.demo.oa_system import OASystem, leave_request
from bots.runtime.config import PollConfig
from bots.runtime.model import track_id
from bots.runtime.runner import BotRuntime
from imserver_sdk import BusinessClient, NonceCache, SignatureError, verify_signature
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS
from tests.integration.test_bots_oa import (
    act,
    card_message,
    card_messages,
    oa_bot_config,
    register_app,
    runtime_config,
    until,
)
from tests.processes import REPO, free_port
from tests.support import Harness


class Feed:
    """The business system's side of polling: an event list served by cursor (an index).

    ``mode`` simulates trouble: ``"down"`` answers 503, ``"garbage"`` answers
    non-JSON. Every GET must carry a valid signature, else 401 (counted).
    """

    def __init__(self, secret: str, delay_s: float = 0.0) -> None:
        self.secret, self.delay_s = secret, delay_s
        self.events: list[Any] = []  # Any: a bad entry is part of some tests
        self.mode = "up"
        self.served = 0  # pages answered 200
        self.unauthorized = 0
        self.queries: list[dict[str, str]] = []
        self._nonces = NonceCache()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/feed"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/feed", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        try:
            verify_signature(self.secret, request.headers, b"", seen_nonces=self._nonces)
        except SignatureError as e:
            self.unauthorized += 1
            return web.json_response({"error": {"code": e.code}}, status=401)
        self.queries.append(dict(request.query))
        if self.mode == "down":
            return web.Response(status=503, text="maintenance")
        if self.mode == "garbage":
            return web.Response(status=200, text="<html>not a feed</html>")
        await asyncio.sleep(self.delay_s)
        after = int(request.query.get("after", "0"))
        limit = int(request.query["limit"])
        page = self.events[after : after + limit]
        self.served += 1
        return web.json_response({"events": page, "cursor": str(after + len(page))})


@dataclass
class PollWorld:
    server: Harness
    runtime: BotRuntime
    oa: OASystem
    feed: Feed
    app: BusinessClient


@pytest.fixture
async def world(
    start_server: Callable[..., Awaitable[Harness]], tmp_path: Path
) -> AsyncIterator[PollWorld]:
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    await server.users("li", "wang")
    app_secret, event_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    oa, feed = OASystem(event_secret), Feed(event_secret)
    await oa.start()
    await feed.start()
    bot = oa_bot_config(app_secret, event_secret, oa.forward_url)
    bot = dataclasses.replace(
        bot, poll=PollConfig(url=feed.url, secret=event_secret, interval_s=0.05, page_size=2)
    )
    runtime = BotRuntime(runtime_config(tmp_path / "bots.sqlite3", server.world.http_url, bot))
    await runtime.start()
    await register_app(server.world.http_url, "oa", app_secret, runtime.url("oa", "callback"))
    app = BusinessClient(server.world.http_url, "oa", app_secret)
    yield PollWorld(server, runtime, oa, feed, app)
    await app.close()
    await runtime.stop()
    await feed.stop()
    await oa.stop()


async def healthz(runtime: BotRuntime) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{runtime.port}/healthz") as r,
    ):
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


async def test_polled_events_become_cards_and_the_decision_reaches_oa_once(
    world: PollWorld,
) -> None:
    li, wang = await world.server.client("li"), await world.server.client("wang")
    world.feed.events += [leave_request("p1", ["li"]), leave_request("p2", ["wang"])]
    view = await card_message(li, track_id("p1"))
    assert view["title"] == "请假审批：张三请假 3 天" and view["actionable_by"] == ["li"]
    await card_message(wang, track_id("p2"))
    await act(li, view["card_id"], "approve")
    await until(lambda: len(world.oa.decisions) == 1, what="the decision at OA")
    (decision,) = world.oa.decisions.values()
    assert (decision["request_id"], decision["event_id"]) == ("OA-p1", "p1")
    await asyncio.sleep(0.5)  # the feed is polled many times over: nothing is redone
    assert len(world.oa.deliveries) == 1
    assert [v["out_track_id"] for v in card_messages(li, "li")] == [track_id("p1")]
    # Signed GETs, the cursor sent back, the page size asked for.
    assert world.feed.unauthorized == 0
    assert world.feed.queries[0] == {"limit": "2"}
    assert world.feed.queries[-1] == {"after": "2", "limit": "2"}
    assert world.runtime.store.poll_cursor("oa") == "2"
    poll = (await healthz(world.runtime))["poll"]["oa"]
    assert (poll["accepted"], poll["refused"]) == (2, 0)


async def test_feed_down_then_back_every_event_arrives_once(world: PollWorld) -> None:
    li = await world.server.client("li")
    stats = world.runtime.pollers["oa"].stats
    world.feed.mode = "down"
    world.feed.events += [leave_request(f"d{n}", ["li"]) for n in range(3)]
    await until(lambda: stats.feed_errors >= 2, what="two failed polls")
    assert stats.last_error == "HTTP 503"
    world.feed.mode = "garbage"
    await until(lambda: "not JSON" in stats.last_error, timeout=10, what="a bad-JSON poll")
    await world.feed.stop()  # unreachable: connection refused
    errors = stats.feed_errors
    await until(lambda: stats.feed_errors > errors, timeout=10, what="a refused connection")
    assert stats.last_error.startswith("ClientConnectorError")
    assert card_messages(li, "li") == []
    assert world.runtime.store.poll_cursor("oa") in (None, "0")  # "0": an empty first page
    world.feed.mode = "up"
    await world.feed.start()  # the same port
    await until(lambda: len(card_messages(li, "li")) == 3, timeout=10, what="three cards")
    await asyncio.sleep(0.5)
    tracks = sorted(v["out_track_id"] for v in card_messages(li, "li"))
    assert tracks == [track_id(f"d{n}") for n in range(3)]
    assert world.runtime.store.counts("oa") == {"card.done": 3}


async def test_a_bad_event_is_skipped_and_the_next_ones_still_arrive(world: PollWorld) -> None:
    li = await world.server.client("li")
    no_approvers = leave_request("bad-1", [])
    bad_envelope = {"event_id": "a b", "type": "oa.request", "data": {}}
    world.feed.events += [no_approvers, bad_envelope, "not an object", leave_request("ok", ["li"])]
    view = await card_message(li, track_id("ok"))
    assert view["actionable_by"] == ["li"]
    poll = (await healthz(world.runtime))["poll"]["oa"]
    assert (poll["refused"], poll["accepted"]) == (3, 1)
    assert world.runtime.store.event("oa", "bad-1") is None
    assert world.runtime.store.poll_cursor("oa") == "4"  # the feed moved past them
    await asyncio.sleep(0.3)
    assert len(card_messages(li, "li")) == 1


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m bots run`` as a child process (a quick fork; it does not block)."""
    return subprocess.Popen(argv, cwd=REPO, env=env)


@pytest.mark.slow
async def test_kill9_mid_feed_loses_nothing_and_pushes_nothing_twice(
    start_server: Callable[..., Awaitable[Harness]], tmp_path: Path
) -> None:
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    app_secret, event_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    feed = Feed(event_secret, delay_s=0.15)  # slow pages: the kill lands mid-feed
    feed.events = [leave_request(f"k{n}", ["li"]) for n in range(12)]
    await feed.start()
    port = free_port()
    config = tmp_path / "bots.toml"
    config.write_text(
        f'[runtime]\nserver_url = "{server.world.http_url}"\nport = {port}\n'
        f'store = "{tmp_path / "bots.sqlite3"}"\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.3\n'
        f'[[bot]]\nname = "oa"\nclass = "bots.oa:OABot"\napp_id = "oa"\n'
        f'app_secret = "{app_secret}"\nevent_secret = "{event_secret}"\n'
        'forward_url = "http://127.0.0.1:1/unused"\n'
        f'[bot.poll]\nurl = "{feed.url}"\ninterval_s = 0.05\npage_size = 3\n'
    )
    await register_app(
        server.world.http_url, "oa", app_secret, f"http://127.0.0.1:{port}/bots/oa/callback"
    )
    li = await server.client("li")
    app = BusinessClient(server.world.http_url, "oa", app_secret)
    argv = [sys.executable, "-m", "bots", "run", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = spawn(argv, env)
    try:
        await until(lambda: feed.served >= 2, timeout=20, what="two pages served")
        proc.kill()  # SIGKILL, mid-feed
        proc.wait()
        assert len(card_messages(li, "li")) < 12, "the kill came too late to test anything"
        asked = len(feed.queries)
        last_after = int(feed.queries[-1].get("after", "0"))
        proc = spawn(argv, env)
        await until(lambda: len(card_messages(li, "li")) >= 12, timeout=30, what="12 cards")
        # The restart asks again from the stored cursor: the page in flight, or the next one.
        assert int(feed.queries[asked].get("after", "0")) - last_after in (0, 3)
        await asyncio.sleep(1.0)  # let any would-be duplicate arrive
        tracks = sorted(v["out_track_id"] for v in card_messages(li, "li"))
        assert tracks == sorted(track_id(f"k{n}") for n in range(12))  # once each
        for n in range(12):
            assert (await app.get_card(track_id(f"k{n}")))["version"] == 1
        assert feed.unauthorized == 0
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await app.close()
        await feed.stop()
