"""/metrics under load: every latency histogram's count and sum move.

Real WebSockets carry chat traffic, a card is pushed by a signed app request,
acted on over WebSocket and its callback reaches a real HTTP stub; then
``/metrics`` is scraped and parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from imserver_sdk import BusinessClient
from tests.cards_support import BusinessStub, approval_card
from tests.support import Harness

HISTOGRAMS = (
    "imserver_send_ack_seconds",
    "imserver_fanout_sockets",
    "imserver_card_act_to_callback_enqueued_seconds",
    "imserver_card_act_to_callback_delivered_seconds",
    "imserver_callback_post_seconds",
    "imserver_store_commit_seconds",
    "imserver_store_commit_jobs",
    "imserver_store_write_queue_depth",
    "imserver_callback_claim_batch",
    "imserver_http_request_seconds",
)


async def scrape(server: Harness) -> dict[str, dict[str, float]]:
    """``{family: {sample name + labels: value}}`` parsed from ``GET /metrics``."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{server.world.http_url}/metrics") as r,
    ):
        assert r.status == 200
        text = await r.text()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def total(families: dict[str, dict[str, float]], name: str, suffix: str) -> float:
    """The sum of a histogram's ``_count`` or ``_sum`` over all its label sets."""
    return sum(v for k, v in families.get(name, {}).items() if k.startswith(name + suffix + "{"))


async def test_histograms_move_under_load(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    before = await scrape(card_server)
    for name in HISTOGRAMS:  # declared from the start (count 0), so alerts can see them
        assert name in before, name

    # Chat: 5 pairs, 20 messages each, over real sockets.
    pairs = [
        (await card_server.client(f"s{i}"), await card_server.client(f"r{i}")) for i in range(5)
    ]
    for _ in range(20):
        await asyncio.gather(*(a.send_text("请审阅", to=f"r{i}") for i, (a, _) in enumerate(pairs)))
    for _, b in pairs:
        for _ in range(20):
            await b.next_event("message", timeout=5)

    # A card: push (signed HTTP), act (WebSocket), callback to the stub.
    li = await card_server.client("li")
    card_id = (await oa.push_card(approval_card("metrics-1", ["li"]), users=["li"]))["card_id"]
    result = await li.request(
        "card.act", card_id=card_id, action="approve", action_id=uuid.uuid4().hex
    )
    assert result["state"] == "approved"
    await asyncio.wait_for(stub.got_action.wait(), 5)

    # An error over HTTP: counted by its stable code.
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{card_server.world.http_url}/api/v1/todo") as r,
    ):
        assert r.status == 401

    for _ in range(100):  # the delivery is recorded right after the stub answered
        after = await scrape(card_server)
        if total(after, "imserver_card_act_to_callback_delivered_seconds", "_count") >= 1:
            break
        await asyncio.sleep(0.05)
    for name in HISTOGRAMS:
        moved = total(after, name, "_count") - total(before, name, "_count")
        grew = total(after, name, "_sum") - total(before, name, "_sum")
        assert moved > 0 and grew > 0, (name, moved, grew)
    assert total(after, "imserver_send_ack_seconds", "_count") >= 100

    errors = after["imserver_http_errors"]
    assert errors["imserver_http_errors_total{code=not_authenticated}"] >= 1
    assert errors["imserver_http_errors_total{code=card_decided}"] == 0  # known code, at 0
    assert after["imserver_request_errors"]["imserver_request_errors_total{code=not_member}"] == 0
    backlog = after["imserver_outbox_backlog"]
    assert backlog["imserver_outbox_backlog{state=pending}"] == 0  # delivered
    assert backlog["imserver_outbox_backlog{state=failed}"] == 0
    assert "imserver_timer_backlog" in after
    route = "route=/api/v1/apps/cards,status=2xx"
    assert any(route in k for k in after["imserver_http_request_seconds"]), after[
        "imserver_http_request_seconds"
    ]
