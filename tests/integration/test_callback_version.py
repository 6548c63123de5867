"""The callback's ``version`` is the one the app updates with (issue #13, item 1).

Recording a callback's delivery used to make a new card version, so the
documented ``PATCH … {"if_version": <callback version>}`` always got 409 and
every click reached holders twice. Delivery status is now kept at the card's
version: one decision is one card event per holder, a failure is still shown
to holders (same version, ``"callback": "failed"``), and a second decision is
what legitimately makes the first callback's version stale.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from imserver_sdk import BusinessClient, BusinessError, Client
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card
from tests.support import Harness

SETTLE_S = 0.4  # long enough for a second (wrong) card event to arrive


async def act(c: Client, card_id: str, action: str = "approve") -> dict[str, Any]:
    return await c.request(
        "card.act", card_id=card_id, action=action, action_id=uuid.uuid4().hex, inputs={}
    )


async def until(read: Any, pred: Any, timeout: float = 8.0) -> dict[str, Any]:
    """Poll ``read()`` until ``pred`` holds for its answer; return that answer."""
    value: dict[str, Any] = {}
    for _ in range(int(timeout / 0.05)):
        value = await read()
        if pred(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met in time; last answer: {value}")


async def wait_actions(stub: BusinessStub, n: int, timeout: float = 8.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if len(stub.actions) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(stub.actions)} callbacks arrived, expected {n}")


def card_events(c: Client, card_id: str) -> list[dict[str, Any]]:
    """The card events for ``card_id`` this client received so far (queue emptied)."""
    return [e.data for e in c.drain_events() if e.name == "card" and e.data["card_id"] == card_id]


async def test_update_with_the_callbacks_version_succeeds_and_reaches_holders(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang = await card_server.client("li"), await card_server.client("wang")
    pushed = await oa.push_card(approval_card("flow", ["li"]), users=["li", "wang"])
    card_id = pushed["card_id"]
    clicked = await act(li, card_id)
    await asyncio.wait_for(stub.got_action.wait(), 8)
    callback = stub.actions[0]
    assert callback.version == clicked["version"] == pushed["version"] + 1
    assert callback.state == "approved"
    # Delivered is recorded at the decision's version, not as a new one.
    seen = await until(lambda: oa.get_card("flow"), lambda v: v["callback"] == "ok")
    assert seen["version"] == callback.version

    updated = await oa.update_card(
        "flow", if_version=callback.version, status={"text": "已办结", "color": "green"}
    )
    assert updated == {"card_id": card_id, "version": callback.version + 1, "state": "approved"}
    for c in (li, wang):
        ev = await c.next_event(
            "card",
            predicate=lambda e: (
                e.data["card_id"] == card_id and e.data["version"] == callback.version + 1
            ),
            timeout=5,
        )
        assert ev.data["status"]["text"] == "已办结" and ev.data["callback"] == "ok"


async def test_one_click_is_one_card_event_per_holder(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    names = ["li", "wang", "zhao"]
    clients = [await card_server.client(n) for n in names]
    card_id = (await oa.push_card(approval_card("once", names), users=names))["card_id"]
    clicked = await act(clients[1], card_id)
    await wait_actions(stub, 1)
    ok = await until(
        lambda: clients[0].request("card.get", card_id=card_id), lambda v: v["callback"] == "ok"
    )
    assert ok["version"] == clicked["version"]  # a later read: same version, delivered
    await asyncio.sleep(SETTLE_S)
    for c in clients:
        events = card_events(c, card_id)
        assert [(e["version"], e["state"], e["callback"]) for e in events] == [
            (clicked["version"], "approved", "pending")
        ], f"{c.user}: {events}"
    # sync after the decision's event still hands out the delivered status.
    raw = await card_server.raw("zhao")
    synced = (await raw.request("sync", cards_since=0))["data"]["cards"]
    assert [(v["version"], v["callback"]) for v in synced] == [(clicked["version"], "ok")]


async def test_a_card_update_answer_is_one_more_version_and_one_more_event(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    stub.answer = lambda a: {"status": {"text": f"已由{a.actor}同意", "color": "green"}}
    li, wang = await card_server.client("li"), await card_server.client("wang")
    card_id = (await oa.push_card(approval_card("answer", ["li"]), users=["li", "wang"]))["card_id"]
    clicked = await act(li, card_id)
    final = await until(lambda: oa.get_card("answer"), lambda v: v["callback"] == "ok")
    assert final["version"] == clicked["version"] + 1 and final["status"]["text"] == "已由li同意"
    await asyncio.sleep(SETTLE_S)
    for c in (li, wang):
        events = card_events(c, card_id)
        assert [(e["version"], e["callback"]) for e in events] == [
            (clicked["version"], "pending"),
            (final["version"], "ok"),
        ], f"{c.user}: {events}"


async def test_a_failed_callback_is_shown_to_holders_and_a_retry_keeps_the_version(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    stub.script = ["500"] * CARD_SETTINGS["callback_max_attempts"]
    li, wang = await card_server.client("li"), await card_server.client("wang")
    card_id = (await oa.push_card(approval_card("fails", ["li"]), users=["li", "wang"]))["card_id"]
    clicked = await act(li, card_id)
    v = clicked["version"]
    for c in (li, wang):  # the decision, then its failure: same version
        decided = await c.next_event("card", predicate=lambda e: e.data["card_id"] == card_id)
        assert (decided.data["version"], decided.data["callback"]) == (v, "pending")
        failed = await c.next_event(
            "card", predicate=lambda e: e.data["card_id"] == card_id, timeout=10
        )
        assert (failed.data["version"], failed.data["callback"]) == (v, "failed")
    assert stub.hits == CARD_SETTINGS["callback_max_attempts"] and stub.actions == []
    assert (await oa.get_card("fails"))["callback"] == "failed"

    http = card_server.world.http_url
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http}/admin/v1/callbacks?state=failed", headers=auth) as r:
            (item,) = (await r.json())["callbacks"]
        url = f"{http}/admin/v1/callbacks/{card_id}/{item['action_id']}/retry"
        async with s.post(url, headers=auth) as r:
            assert r.status == 200, await r.text()
    await wait_actions(stub, 1)
    assert stub.actions[0].version == v
    delivered = await until(lambda: oa.get_card("fails"), lambda c: c["callback"] == "ok")
    assert delivered["version"] == v  # pending → ok after the retry: no new version
    await asyncio.sleep(SETTLE_S)
    for c in (li, wang):  # the failure's end is shown; "ok" is left to the next read
        events = card_events(c, card_id)
        assert [(e["version"], e["callback"]) for e in events] == [(v, "pending")], events
    updated = await oa.update_card("fails", if_version=v, status={"text": "已办结"})
    assert updated["version"] == v + 1


async def test_a_second_all_of_decision_makes_the_first_callbacks_version_stale(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang = await card_server.client("li"), await card_server.client("wang")
    card_id = (
        await oa.push_card(approval_card("all", ["li", "wang"], "all"), users=["li", "wang"])
    )["card_id"]
    first = await act(li, card_id)
    second = await act(wang, card_id)
    assert (first["state"], second["state"]) == ("open", "approved")
    await wait_actions(stub, 2)
    by_actor = {a.actor: a.version for a in stub.actions}
    assert by_actor == {"li": first["version"], "wang": first["version"] + 1}
    with pytest.raises(BusinessError) as info:
        await oa.update_card("all", if_version=by_actor["li"], status={"text": "x"})
    assert info.value.status == 409 and info.value.code == "version_conflict"
    assert info.value.body["details"] == {"version": by_actor["wang"]}
    updated = await oa.update_card("all", if_version=by_actor["wang"], status={"text": "已办结"})
    assert updated["version"] == by_actor["wang"] + 1
