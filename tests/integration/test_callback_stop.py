"""A graceful stop gives back the callbacks it cut off mid-send (cards/callbacks.py).

Before, a claim taken just before the stop stayed leased for ``callback_timeout_s``
+ 10 s: the restarted node (or any other) could not send that callback meanwhile.
Real server, real business system on loopback, the same store across the restart
(SQLite, or PostgreSQL under ``IM_TEST_STORE=postgres``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from aiohttp import web

from cards.callbacks import STOP_GRACE_S, STOPPED
from imserver.app import build_store
from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card, register_app
from tests.support import make_test_config, start_harness, stop_harness

TIMEOUT_S = 5.0  # the lease is this + 10 s: far longer than the test waits


class HangsOnce(BusinessStub):
    """Answers nothing to the first callback (holds it open); verifies the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()
        self.release = asyncio.Event()  # set at the end: the held request then ends

    async def _route(self, request: web.Request) -> web.StreamResponse:
        if not self.first.is_set():
            self.hits += 1
            self.first.set()
            await self.release.wait()  # the server's stop cuts it off long before
            return web.Response(status=503)
        return await super()._route(request)


async def test_a_callback_cut_off_by_a_stop_is_sent_at_once_after_the_restart(
    tmp_path: Path,
) -> None:
    stub = HangsOnce()
    await stub.start()
    config = make_test_config(
        tmp_path / "data",
        {
            "auth": {"admin_api_key": ADMIN_KEY},
            "cards": {**CARD_SETTINGS, "callback_timeout_s": TIMEOUT_S},
        },
    )
    server = await start_harness(config)
    try:
        await register_app(server.world.http_url, stub)
        li = await server.client("li")
        async with BusinessClient(server.world.http_url, stub.app_id, stub.secret) as oa:
            card_id = (await oa.push_card(approval_card("stop-1", ["li"]), users=["li"]))["card_id"]
        acted = await li.request(
            "card.act", card_id=card_id, action="approve", action_id=uuid.uuid4().hex, inputs={}
        )
        assert acted["state"] == "approved"
        await asyncio.wait_for(stub.first.wait(), 5)  # the POST is open at the stub
        started = time.monotonic()
    finally:
        await stop_harness(server)
    stopped_in = time.monotonic() - started
    assert stopped_in < STOP_GRACE_S + 2, stopped_in  # not the whole callback timeout

    store = build_store(config)  # the store the server used, read between the two runs
    await store.open()
    try:
        (item,) = await store.list_callbacks("pending", 10)
        assert (item.card_id, item.attempts, item.last_error) == (card_id, 0, STOPPED)
    finally:
        await store.close()

    restarted = time.monotonic()
    server = await start_harness(config)
    try:
        await asyncio.wait_for(stub.got_action.wait(), 4)  # far sooner than the 15 s lease
        assert time.monotonic() - restarted < 4
        assert [(a.card_id, a.decision) for a in stub.actions] == [(card_id, "approve")]
    finally:
        await stop_harness(server)
        stub.release.set()
        await stub.stop()
