"""DING (urgent, must be confirmed) and card deadlines (remind, overdue, escalate)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from imserver.app import build_world, start_world, stop_world
from imserver_sdk import BusinessClient, BusinessError, ServerError
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card, business
from tests.support import Harness


async def test_urgent_group_message_confirmations_and_renotification(start_server: Any) -> None:
    server: Harness = await start_server(chat={"ding_interval_s": 0.2, "ding_max_renotify": 2})
    await server.users("bob", "carol")
    alice = await server.client("alice")
    bob = await server.client("bob")
    carol = await server.client("carol")
    conv = (await alice.create_group("防汛", ["bob", "carol"]))["conv"]
    ack = await alice.send("text", {"text": "今晚值班表已更新"}, conv=conv)
    assert ack.seq == 2
    seq = (await alice.send_text("紧急：18:00 前确认到岗", conv=conv, urgent=True)).seq
    ev = await bob.next_event("message", predicate=lambda e: e.data["seq"] == seq)
    assert ev.data["body"]["urgent"] is True
    status = await alice.ding_status(conv, seq)
    assert (status["confirmed"], status["unconfirmed"]) == ([], ["bob", "carol"])

    assert (await bob.confirm_ding(conv, seq))["confirmed"] is True
    ev = await alice.next_event("ding_confirmed", timeout=5)
    assert ev.data == {"conv": conv, "seq": seq, "user": "bob"}
    status = await alice.request("ding.status", conv=conv, seq=seq)
    assert (status["confirmed"], status["unconfirmed"]) == (["bob"], ["carol"])

    # carol, unconfirmed, is re-notified twice (the limit), then no more; bob never.
    got = []
    for _ in range(2):
        ev = await carol.next_event("ding", timeout=3)
        got.append(ev.data["renotify"])
        assert ev.data["message"]["seq"] == seq
    assert got == [1, 2]
    with pytest.raises(TimeoutError):
        await carol.next_event("ding", timeout=0.6)
    with pytest.raises(TimeoutError):
        await bob.next_event("ding", timeout=0.1)

    refusals = [
        (bob, "ding.status", seq, "forbidden"),  # only the sender sees the lists
        (alice, "ding.confirm", seq, "no_such_ding"),  # the sender has nothing to confirm
        (bob, "ding.confirm", ack.seq, "no_such_ding"),  # a plain message is no DING
    ]
    for client, req, target, code in refusals:
        with pytest.raises(ServerError) as info:
            await client.request(req, conv=conv, seq=target)
        assert info.value.code == code


async def test_urgent_card_confirmation_seen_by_the_app(
    start_server: Any, stub: BusinessStub
) -> None:
    server: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    oa = await business(server, stub)
    li = await server.client("li")
    await server.users("wang")
    await oa.push_card(approval_card("u1", ["li"], urgent=True), users=["li", "wang"])
    card = await oa.get_card("u1")
    assert card["urgent"] is True
    assert card["ding"] == {"confirmed": [], "unconfirmed": ["li", "wang"]}
    ev = await li.next_event("message", predicate=lambda e: e.data["kind"] == "card")
    await li.request("ding.confirm", conv=ev.data["conv"], seq=ev.data["seq"])
    card = await oa.get_card("u1")
    assert card["ding"] == {"confirmed": ["li"], "unconfirmed": ["wang"]}
    await oa.close()


@pytest.mark.slow
async def test_deadline_reminder_overdue_and_escalation_survive_a_restart(
    start_server: Any, stub: BusinessStub
) -> None:
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY},
        cards={**CARD_SETTINGS, "reminder_offsets_s": (1,)},
    )
    config = server.world.config
    oa = await business(server, stub)
    await server.users("li", "boss")
    due = int((time.time() + 2.0) * 1000)  # reminder at due-1 s, overdue + escalation at due
    card_id = (
        await oa.push_card(
            approval_card("late", ["li"], due_at=due, escalate_to="boss"), users=["li"]
        )
    )["card_id"]
    await oa.close()
    # The server goes down before anything fires; a new one on the same data takes over.
    await server.close()
    await stop_world(server.world)
    world = build_world(config)
    await start_world(world)
    server.world = world
    try:
        li = await server.client("li")
        boss = await server.client("boss")
        remind = await li.next_event(
            "message", predicate=lambda e: e.data["kind"] == "notice", timeout=5
        )
        assert remind.data["body"]["title"].startswith("待办提醒") and time.time() * 1000 < due
        view = await li.next_event(
            "card",
            predicate=lambda e: e.data["card_id"] == card_id and e.data["overdue"],
            timeout=5,
        )
        assert view.data["state"] == "open" and time.time() * 1000 >= due
        escalated = await boss.next_event(
            "message", predicate=lambda e: e.data["kind"] == "card", timeout=5
        )
        assert escalated.data["body"]["card"]["card_id"] == card_id
        notice = await boss.next_event(
            "message", predicate=lambda e: e.data["kind"] == "notice", timeout=5
        )
        assert (
            notice.data["body"]["title"].startswith("督办") and "li" in notice.data["body"]["text"]
        )
        # boss now holds the card (can read it) but is not an approver.
        assert (await boss.request("card.get", card_id=card_id))["overdue"] is True
        todo = await li.request("todo")
        assert todo["overdue"] == 1
        with pytest.raises(ServerError) as info:
            await boss.request("card.act", card_id=card_id, action="approve", action_id="b")
        assert info.value.code == "not_actor"
    finally:
        await server.close()
        await stop_world(world)
        server.world.started = False  # the fixture's stop becomes a no-op


async def test_decided_card_gets_no_reminders(start_server: Any, stub: BusinessStub) -> None:
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={**CARD_SETTINGS, "reminder_offsets_s": (1,)}
    )
    oa: BusinessClient = await business(server, stub)
    li = await server.client("li")
    due = int((time.time() + 1.3) * 1000)
    card_id = (await oa.push_card(approval_card("done", ["li"], due_at=due), users=["li"]))[
        "card_id"
    ]
    await li.request("card.act", card_id=card_id, action="approve", action_id="a")
    await asyncio.sleep(1.6)
    notices = [m for m in (await li.history("n:oa:li"))["messages"] if m["kind"] == "notice"]
    assert notices == []
    assert (await li.request("card.get", card_id=card_id))["overdue"] is False
    await oa.close()


async def test_urgent_notice_is_a_ding_the_app_can_follow(
    start_server: Any, stub: BusinessStub
) -> None:
    server: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    oa = await business(server, stub)
    li = await server.client("li")
    await server.users("wang")
    sent = await oa.send_notice("防汛紧急通知", "请立即到岗", users=["li", "wang"], urgent=True)
    assert sent["recipients"] == 2
    status = await oa.notice_ding_status(sent["notice_id"])
    assert (status["confirmed"], status["unconfirmed"]) == ([], ["li", "wang"])
    ev = await li.next_event("message", predicate=lambda e: e.data["kind"] == "notice")
    assert ev.data["body"]["urgent"] is True
    await li.confirm_ding(ev.data["conv"], ev.data["seq"])
    status = await oa.notice_ding_status(sent["notice_id"])
    assert (status["confirmed"], status["unconfirmed"]) == (["li"], ["wang"])
    plain = await oa.send_notice("周报", "请于周五前提交", users=["li"])
    with pytest.raises(BusinessError) as info:
        await oa.notice_ding_status(plain["notice_id"])
    assert (info.value.status, info.value.code) == (404, "no_such_ding")
    await oa.close()
