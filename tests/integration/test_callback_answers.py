"""What the body of a callback's 2xx answer does, as docs/cards.md section 6 states it.

Written for the Java integration (clients/java), whose author needed these answers from
the docs: an empty or non-JSON 2xx acknowledges without an update, and the ``if_version``
inside a ``card_update`` answer is not checked. The business side here is a bare aiohttp
server answering exactly the bytes each test gives, not the SDK.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, approval_card
from tests.support import Harness

APP = "oa-raw"
SECRET = "raw-business-secret-0123456789abcdef"


class RawBusiness:
    """A ``callback_url`` that answers every callback with ``answer`` (bytes, as given)."""

    def __init__(self) -> None:
        self.answer = b""
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _route(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits += 1
        return web.Response(status=200, body=self.answer, content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/callback", self._route)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/callback"


@pytest.fixture
async def raw_business(card_server: Harness) -> AsyncIterator[tuple[RawBusiness, BusinessClient]]:
    biz = RawBusiness()
    await biz.start()
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{card_server.world.http_url}/admin/v1/apps",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"app_id": APP, "secret": SECRET, "callback_url": biz.url, "scope": ["*"]},
        ) as r,
    ):
        assert r.status == 201, await r.text()
    async with BusinessClient(card_server.world.http_url, APP, SECRET) as oa:
        yield biz, oa
    assert biz.runner is not None
    await biz.runner.cleanup()


async def decide_and_settle(
    server: Harness, oa: BusinessClient, track: str, others: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """li approves a pushed card; returns li's answer and the card once delivery settled."""
    li = await server.client("li")
    pushed = await oa.push_card(approval_card(track, ["li"]), users=["li", *(others or [])])
    clicked = await li.request(
        "card.act",
        card_id=pushed["card_id"],
        action="approve",
        action_id=uuid.uuid4().hex,
        inputs={},
    )
    card: dict[str, Any] = {}
    for _ in range(200):
        card = await oa.get_card(track)
        if card["callback"] != "pending":
            return clicked, card
        await asyncio.sleep(0.05)
    raise AssertionError(f"callback never settled: {card}")


@pytest.mark.parametrize("answer", [b"", b"OK", b"[1, 2]", b'{"unrelated": true}'])
async def test_a_2xx_without_a_card_update_acknowledges_and_makes_no_version(
    card_server: Harness, raw_business: tuple[RawBusiness, BusinessClient], answer: bytes
) -> None:
    biz, oa = raw_business
    biz.answer = answer
    clicked, card = await decide_and_settle(card_server, oa, "plain")
    assert card["callback"] == "ok" and card["version"] == clicked["version"], card
    await asyncio.sleep(0.3)
    assert biz.hits == 1  # acknowledged: not sent again


async def test_if_version_inside_a_card_update_answer_is_not_checked(
    card_server: Harness, raw_business: tuple[RawBusiness, BusinessClient]
) -> None:
    biz, oa = raw_business
    biz.answer = (
        b'{"card_update": {"if_version": 999, "status": {"text": "done", "color": "green"}}}'
    )
    clicked, card = await decide_and_settle(card_server, oa, "stale")
    for _ in range(100):  # the answer's update lands just after delivery is recorded
        if card["version"] > clicked["version"]:
            break
        await asyncio.sleep(0.05)
        card = await oa.get_card("stale")
    assert card["version"] == clicked["version"] + 1, card
    assert card["status"] == {"text": "done", "color": "green"} and card["callback"] == "ok"
