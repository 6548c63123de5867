"""Cards end to end: push → act → signed callback → update → every holder converges."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from imserver_sdk import BusinessClient, BusinessError, Client, ServerError
from tests.cards_support import (
    ADMIN_KEY,
    CARD_SETTINGS,
    BusinessStub,
    approval_card,
)
from tests.support import Harness


async def act(c: Client, card_id: str, action: str = "approve", **inputs: str) -> dict[str, Any]:
    return await c.request(
        "card.act", card_id=card_id, action=action, action_id=uuid.uuid4().hex, inputs=inputs
    )


async def latest_card(
    c: Client, card_id: str, version: int, timeout: float = 5.0
) -> dict[str, Any]:
    """Wait until this client has seen ``version`` of the card (by event); return that view."""
    ev = await c.next_event(
        "card",
        predicate=lambda e: e.data["card_id"] == card_id and e.data["version"] >= version,
        timeout=timeout,
    )
    return ev.data


async def wait_for(pred: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
async def test_twenty_approvers_one_approves_one_callback_all_converge(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    names = [f"a{i:02d}" for i in range(20)]
    clients = [await card_server.client(n) for n in names]
    stub.answer = lambda a: {"status": {"text": f"已由{a.actor}同意", "color": "green"}}
    pushed = await oa.push_card(approval_card("leave-1", names), users=names)
    assert pushed["version"] == 1 and pushed["holders"] == 20 and not pushed["duplicate"]
    card_id = pushed["card_id"]
    for c in clients:  # each holder got the card message, with the view
        ev = await c.next_event("message", predicate=lambda e: e.data["kind"] == "card")
        view = ev.data["body"]["card"]
        assert view["card_id"] == card_id and view["state"] == "open"
        assert view["actionable_by"] == names
        assert view["fields"][1]["value"] == "138****1234"  # sensitive: masked
        assert view["callback"] == "none"  # nobody has acted: no callback is owed

    result = await act(clients[7], card_id)
    assert (result["state"], result["decided_by"]) == ("approved", "a07")
    await asyncio.wait_for(stub.got_action.wait(), 5)
    await wait_for(lambda: len(stub.actions) == 1)
    a = stub.actions[0]
    assert (a.actor, a.action, a.decision, a.state, a.out_track_id) == (
        "a07",
        "approve",
        "approve",
        "approved",
        "leave-1",
    )
    # The callback's card_update is applied and reaches all 20 at one final version.
    for _ in range(100):
        final = await oa.get_card("leave-1")
        if final["status"]["text"] == "已由a07同意" and final["callback"] == "ok":
            break
        await asyncio.sleep(0.02)
    assert final["fields"][1]["value"] == "13812341234"  # the app sees its own data
    for c in clients:
        view = await latest_card(c, card_id, final["version"])
        assert view["version"] == final["version"]
        assert (view["state"], view["decided_by"], view["actionable_by"]) == ("approved", "a07", [])
        assert view["status"]["text"] == "已由a07同意"
    assert stub.hits == 1 and len(stub.actions) == 1


@pytest.mark.slow
async def test_twenty_way_race_on_any_of_exactly_one_wins(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    names = [f"r{i:02d}" for i in range(20)]
    clients = [await card_server.client(n) for n in names]
    card_id = (await oa.push_card(approval_card("race", names), users=names))["card_id"]

    async def press(c: Client) -> dict[str, Any] | ServerError:
        try:
            return await act(c, card_id)
        except ServerError as e:
            return e

    results = await asyncio.gather(*(press(c) for c in clients))
    wins = [r for r in results if isinstance(r, dict)]
    losses = [r for r in results if isinstance(r, ServerError)]
    assert len(wins) == 1 and len(losses) == 19
    winner = wins[0]["decided_by"]
    for e in losses:
        assert e.code == "card_decided"
    await wait_for(lambda: len(stub.actions) == 1)
    await asyncio.sleep(0.3)
    assert len(stub.actions) == 1 and stub.actions[0].actor == winner
    final = await oa.get_card("race")
    for c in clients:
        view = await latest_card(c, card_id, final["version"])
        assert view["decided_by"] == winner and view["state"] == "approved"


async def test_all_of_needs_everyone_and_one_rejection_rejects(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang, zhao = [await card_server.client(n) for n in ("li", "wang", "zhao")]
    card_id = (
        await oa.push_card(
            approval_card("all-1", ["li", "wang", "zhao"], "all"), users=["li", "wang", "zhao"]
        )
    )["card_id"]
    assert (await act(li, card_id))["state"] == "open"
    with pytest.raises(ServerError) as info:
        await act(li, card_id)
    assert info.value.code == "already_acted"
    assert (await act(wang, card_id))["state"] == "open"
    todo = await zhao.request("todo")
    assert [c["card_id"] for c in todo["cards"]] == [card_id]
    last = await act(zhao, card_id)
    assert (last["state"], last["decided_by"]) == ("approved", "zhao")
    await wait_for(lambda: len(stub.actions) == 3)
    assert [a.actor for a in stub.actions] == ["li", "wang", "zhao"]

    card2 = (
        await oa.push_card(approval_card("all-2", ["li", "wang"], "all"), users=["li", "wang"])
    )["card_id"]
    with pytest.raises(ServerError) as info:
        await act(li, card2, "reject")  # a rejection needs a comment
    assert info.value.code == "invalid_field" and info.value.field == "inputs.comment"
    rejected = await act(li, card2, "reject", comment="材料不全")
    assert (rejected["state"], rejected["decided_by"]) == ("rejected", "li")
    with pytest.raises(ServerError) as info:
        await act(wang, card2)
    assert info.value.code == "card_decided"
    await wait_for(lambda: len(stub.actions) == 4)
    assert stub.actions[-1].inputs == {"comment": "材料不全"}


async def test_sequential_actors_in_order(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    a, b, c = [await card_server.client(n) for n in ("ka", "kb", "kc")]
    card_id = (
        await oa.push_card(
            approval_card("seq", ["ka", "kb", "kc"], "sequential"), users=["ka", "kb", "kc"]
        )
    )["card_id"]
    with pytest.raises(ServerError) as info:
        await act(b, card_id)
    assert info.value.code == "not_your_turn"
    assert (await act(a, card_id))["state"] == "open"
    view = await b.request("card.get", card_id=card_id)
    assert view["actionable_by"] == ["kb"]
    assert (await act(b, card_id))["state"] == "open"
    done = await act(c, card_id)
    assert (done["state"], done["decided_by"]) == ("approved", "kc")
    await wait_for(lambda: len(stub.actions) == 3)


async def test_repeated_action_id_is_idempotent(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li = await card_server.client("li")
    card_id = (await oa.push_card(approval_card("idem", ["li"]), users=["li"]))["card_id"]
    first = await li.request("card.act", card_id=card_id, action="approve", action_id="same")
    again = await li.request("card.act", card_id=card_id, action="approve", action_id="same")
    assert first["repeat"] is False and again["repeat"] is True
    assert again["state"] == "approved" and again["decided_by"] == "li"
    await wait_for(lambda: len(stub.actions) == 1)
    await asyncio.sleep(0.2)
    assert len(stub.actions) == 1


async def test_callback_fails_then_times_out_then_succeeds_effect_once(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    stub.script = ["500", "slow", "ok"]
    stub.answer = lambda a: {"status": {"text": "已办结", "color": "green"}}
    li = await card_server.client("li")
    card_id = (await oa.push_card(approval_card("retry", ["li"]), users=["li"]))["card_id"]
    await act(li, card_id)
    await wait_for(lambda: stub.hits >= 3 and len(stub.actions) >= 1, timeout=10)
    await asyncio.sleep(0.8)  # the slow request's late answer must not add an effect
    assert len(stub.actions) == 1  # effect once
    for _ in range(100):
        card = await oa.get_card("retry")
        if card["callback"] == "ok":
            break
        await asyncio.sleep(0.05)
    assert card["callback"] == "ok" and card["status"]["text"] == "已办结"


async def test_exhausted_callback_marks_card_failed_and_admin_retry_delivers(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    import aiohttp

    stub.script = ["500"] * CARD_SETTINGS["callback_max_attempts"]
    li = await card_server.client("li")
    card_id = (await oa.push_card(approval_card("fail", ["li"]), users=["li"]))["card_id"]
    result = await act(li, card_id)
    await wait_for(lambda: stub.hits == CARD_SETTINGS["callback_max_attempts"], timeout=10)
    view = None
    for _ in range(100):
        view = await li.request("card.get", card_id=card_id)
        if view["callback"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert view is not None and view["callback"] == "failed"
    metrics = card_server.world.metrics.callbacks_failed._value.get()
    assert metrics == 1
    http = card_server.world.http_url
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http}/admin/v1/callbacks?state=failed", headers=auth) as r:
            failed = (await r.json())["callbacks"]
        assert [(f["card_id"], f["attempts"]) for f in failed] == [(card_id, 4)]
        action_id = failed[0]["action_id"]
        async with s.post(
            f"{http}/admin/v1/callbacks/{card_id}/{action_id}/retry", headers=auth
        ) as r:
            assert r.status == 200
    await wait_for(lambda: len(stub.actions) == 1, timeout=5)
    assert stub.actions[0].action_id == action_id and result["state"] == "approved"


async def test_card_update_reaches_offline_holder_on_sync(
    card_server: Harness, oa: BusinessClient
) -> None:
    await card_server.users("li", "wang")
    card = approval_card("upd", ["li"], policy="any")
    card_id = (await oa.push_card(card, users=["li", "wang"]))["card_id"]
    updated = await oa.update_card("upd", body_md="**已延期**", if_version=1)
    assert updated == {"card_id": card_id, "version": 2, "state": "open"}
    with pytest.raises(BusinessError) as info:
        await oa.update_card("upd", title="x", if_version=1)
    assert info.value.status == 409 and info.value.code == "version_conflict"

    wang = await card_server.client("wang")  # offline until now: connect() syncs
    held = wang.messages("n:oa:wang")
    assert [m["kind"] for m in held] == ["card"]
    assert held[0]["body"]["card"]["version"] == 2
    assert held[0]["body"]["card"]["body_md"] == "**已延期**"
    # An app's close ends the card for everyone.
    closed = await oa.update_card("upd", state="closed", status={"text": "已撤回", "color": "gray"})
    assert closed["state"] == "closed"
    view = await latest_card(wang, card_id, 3)
    assert view["state"] == "closed" and view["actionable_by"] == []


async def test_sync_hands_out_cards_changed_since_a_cursor(
    card_server: Harness, oa: BusinessClient
) -> None:
    await card_server.users("li")
    c1 = (await oa.push_card(approval_card("s1", ["li"]), users=["li"]))["card_id"]
    c2 = (await oa.push_card(approval_card("s2", ["li"]), users=["li"]))["card_id"]
    raw = await card_server.raw("li")
    first = (await raw.request("sync", cards_since=0))["data"]
    assert [c["card_id"] for c in first["cards"]] == [c1, c2]
    cursor = first["cards_cursor"]
    await oa.update_card("s1", body_md="changed")
    later = (await raw.request("sync", cards_since=cursor, since={"n:oa:li": 2}))["data"]
    assert [(c["card_id"], c["version"]) for c in later["cards"]] == [(c1, 2)]
    assert later["conversations"] == []


async def test_todo_changes_live(card_server: Harness, oa: BusinessClient) -> None:
    li = await card_server.client("li")
    wang = await card_server.client("wang")
    due = 1_900_000_000_000
    card_id = (
        await oa.push_card(approval_card("todo", ["li", "wang"], due_at=due), users=["li", "wang"])
    )["card_id"]
    ev = await li.next_event("todo", timeout=5)
    assert ev.data == {"card_id": card_id, "pending": True}
    todo = await li.request("todo")
    assert todo["total"] == 1 and todo["cards"][0]["due_at"] == due
    await act(wang, card_id)
    ev = await li.next_event("todo", timeout=5)
    assert ev.data == {"card_id": card_id, "pending": False}
    assert (await li.request("todo"))["total"] == 0


async def test_group_card_and_notices(card_server: Harness, oa: BusinessClient) -> None:
    await card_server.users("li", "wang", "zhao")
    li = await card_server.client("li")
    group = (await li.create_group("县应急办", ["wang", "zhao"]))["conv"]
    pushed = await oa.push_card(approval_card("grp", ["wang"]), groups=[group])
    assert pushed["holders"] == 3
    ev = await li.next_event("message", predicate=lambda e: e.data["kind"] == "card")
    assert ev.data["conv"] == group and ev.data["sender"] == "app:oa"
    sent = await oa.send_notice("停电通知", "明日 9:00-12:00 停电", users=["zhao"], groups=[group])
    assert sent["recipients"] == 3 and sent["notice_id"].startswith("nt_")
    zhao = await card_server.client("zhao")
    notices = [m for m in zhao.messages("n:oa:zhao") if m["kind"] == "notice"]
    assert notices[0]["body"]["title"] == "停电通知"
    with pytest.raises(ServerError) as info:
        await zhao.send_text("回复", conv="n:oa:zhao")
    assert info.value.code == "forbidden"


async def test_acting_over_http(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    import aiohttp

    await card_server.users("li")
    card_id = (await oa.push_card(approval_card("http", ["li"]), users=["li"]))["card_id"]
    url = f"{card_server.world.http_url}/api/v1/cards/{card_id}/act"
    headers = {"Authorization": f"Bearer {card_server.token('li')}"}
    body = {"action": "reject", "action_id": "h1", "inputs": {"comment": "不同意"}}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body, headers=headers) as r:
            assert r.status == 200
            assert (await r.json())["state"] == "rejected"
        async with s.post(url, json={**body, "action_id": "h2"}, headers=headers) as r:
            assert r.status == 409
            err = (await r.json())["error"]
            assert err["code"] == "card_decided" and err["details"] == {"decided_by": "li"}
        async with s.get(f"{card_server.world.http_url}/api/v1/todo", headers=headers) as r:
            assert (await r.json())["total"] == 0
    await wait_for(lambda: len(stub.actions) == 1)
