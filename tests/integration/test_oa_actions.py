"""OA workflow actions end to end (issue #13 item 4, docs/cards.md section 5a).

A real server, real WebSocket clients and the business-system stub on loopback
(callbacks verified by the SDK's handler): 已阅, 转交, 加签, 退回 and link buttons,
each called back once with its kind and target, seen in every holder's trail;
the todo moves with the turn; the race of 转交 and 同意 on one step has exactly
one outcome; bad input is refused with a stable code and changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from imserver_sdk import BusinessClient, BusinessError, Client, ServerError
from tests.cards_support import BusinessStub, register_app
from tests.support import Harness


def oa_card(track: str, actors: list[str], policy: str = "sequential") -> dict[str, Any]:
    """A 公文 card with every kind of button (a return to a step only when sequential)."""
    actions: list[dict[str, Any]] = [
        {"id": "approve", "label": "同意", "decision": "approve", "style": "primary"},
        {"id": "read", "label": "已阅", "kind": "neutral"},
        {"id": "give", "label": "转交", "kind": "transfer"},
        {"id": "add", "label": "加签", "kind": "add_signer"},
        {"id": "home", "label": "退回发起人", "kind": "return", "to": "initiator"},
        {
            "id": "open",
            "label": "查看原文",
            "kind": "link",
            "url": "https://oa.example.gov.cn/doc/7",
        },
    ]
    reasons = ["home"]
    if policy == "sequential":
        actions.insert(4, {"id": "back", "label": "退回", "kind": "return", "to": "step"})
        reasons.append("back")
    return {
        "out_track_id": track,
        "title": "关于印发年度工作要点的通知",
        "actions": actions,
        "inputs": [{"id": "comment", "type": "text", "label": "意见", "required_for": reasons}],
        "policy": {"type": policy, "actors": actors},
    }


async def act(
    c: Client,
    card_id: str,
    action: str,
    target: dict[str, Any] | None = None,
    action_id: str | None = None,
    **inputs: str,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "card_id": card_id,
        "action": action,
        "action_id": action_id or uuid.uuid4().hex,
        "inputs": inputs,
    }
    if target is not None:
        fields["target"] = target
    return await c.request("card.act", **fields)


async def refused(c: Client, card_id: str, action: str, **kw: Any) -> ServerError:
    with pytest.raises(ServerError) as info:
        await act(c, card_id, action, **kw)
    return info.value


async def wait_for(pred: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def card_event(c: Client, card_id: str, version: int) -> dict[str, Any]:
    ev = await c.next_event(
        "card", predicate=lambda e: e.data["card_id"] == card_id and e.data["version"] >= version
    )
    return ev.data


def calls(stub: BusinessStub, card_id: str) -> list[dict[str, Any]]:
    return [a.raw for a in stub.actions if a.card_id == card_id]


def by_version(call: dict[str, Any]) -> int:
    version: int = call["version"]
    return version


async def todo_ids(c: Client) -> list[str]:
    return [v["card_id"] for v in (await c.request("todo"))["cards"]]


async def push(oa: BusinessClient, card: dict[str, Any], users: list[str]) -> str:
    card_id: str = (await oa.push_card(card, users=users))["card_id"]
    return card_id


async def test_neutral_read_is_called_back_once_decides_nothing_and_shows_in_the_trail(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang, zhao = [await card_server.client(n) for n in ("li", "wang", "zhao")]
    card_id = await push(oa, oa_card("read-1", ["li", "wang"], "any"), ["li", "wang", "zhao"])
    first = await act(zhao, card_id, "read", action_id="r1")  # a holder, not an approver
    assert (first["state"], first["decided_by"], first["repeat"]) == ("open", None, False)
    again = await act(zhao, card_id, "read", action_id="r1")
    assert again["repeat"] is True and again["version"] == first["version"]
    assert (await refused(zhao, card_id, "read")).code == "already_acted"
    await wait_for(lambda: len(calls(stub, card_id)) == 1)
    cb = calls(stub, card_id)[0]
    assert (cb["kind"], cb["decision"], cb["target"], cb["actor"]) == (
        "neutral",
        None,
        None,
        "zhao",
    )
    assert cb["actionable_by"] == ["li", "wang"] and cb["state"] == "open"
    for c in (li, wang, zhao):
        view = await card_event(c, card_id, first["version"])
        assert [(t["actor"], t["kind"]) for t in view["trail"]] == [("zhao", "neutral")]
        assert view["decisions"] == [] and view["actionable_by"] == ["li", "wang"]
    assert await todo_ids(li) == [card_id] and await todo_ids(zhao) == []
    await asyncio.sleep(0.2)
    assert stub.hits == 1


async def test_transfer_gives_the_card_and_the_todo_to_the_new_actor(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang, chen = [await card_server.client(n) for n in ("li", "wang", "chen")]
    card_id = await push(oa, oa_card("give-1", ["li", "wang"]), ["li", "wang"])
    assert await todo_ids(li) == [card_id]
    result = await act(li, card_id, "give", {"user": "chen"})
    assert (result["state"], result["version"]) == ("open", 2)
    # chen now holds the card: a card message in the app's notice conversation
    msg = await chen.next_event(
        "message", predicate=lambda e: e.data["kind"] == "card" and e.data["conv"] == "n:oa:chen"
    )
    view = msg.data["body"]["card"]
    assert (view["card_id"], view["actionable_by"]) == (card_id, ["chen"])
    assert view["policy"]["actors"] == ["chen", "wang"]
    assert [(t["actor"], t["kind"], t["target"]) for t in view["trail"]] == [
        ("li", "transfer", {"user": "chen"})
    ]
    for c in (li, wang):  # the holders see the transfer too
        seen = await card_event(c, card_id, 2)
        assert seen["actionable_by"] == ["chen"] and seen["trail"][0]["kind"] == "transfer"
    await li.next_event(  # the push put it in li's todo; the transfer takes it out
        "todo", predicate=lambda e: e.data["card_id"] == card_id and e.data["pending"] is False
    )
    assert await todo_ids(li) == [] and await todo_ids(chen) == [card_id]
    # li can no longer decide; chen can, and then it is wang's turn
    assert (await refused(li, card_id, "approve")).code == "not_actor"
    assert (await act(chen, card_id, "approve"))["state"] == "open"
    assert await todo_ids(wang) == [card_id]
    await wait_for(lambda: len(calls(stub, card_id)) == 2)
    cb = min(calls(stub, card_id), key=by_version)
    assert (cb["kind"], cb["target"], cb["actors"], cb["actionable_by"]) == (
        "transfer",
        {"user": "chen"},
        ["chen", "wang"],
        ["chen"],
    )
    assert cb["decision"] is None and cb["version"] == 2
    app_view = await oa.get_card("give-1")
    assert app_view["policy"]["actors"] == ["chen", "wang"]
    assert [t["kind"] for t in app_view["trail"]] == ["transfer", "decision"]


async def test_transfer_over_http_carries_the_target(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    await card_server.users("li", "wang", "chen")
    card_id = await push(oa, oa_card("give-http", ["li", "wang"], "all"), ["li", "wang"])
    url = f"{card_server.world.http_url}/api/v1/cards/{card_id}/act"
    headers = {"Authorization": f"Bearer {card_server.token('li')}"}
    body = {"action": "give", "action_id": "h1", "target": {"user": "chen"}}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["state"] == "open"
        async with s.post(url, json={**body, "target": {"user": ""}}, headers=headers) as r:
            assert r.status == 400
            err = (await r.json())["error"]
            assert (err["code"], err["field"]) == ("invalid_field", "target.user")
    await wait_for(lambda: len(calls(stub, card_id)) == 1)
    assert calls(stub, card_id)[0]["target"] == {"user": "chen"}
    assert (await oa.get_card("give-http"))["actionable_by"] == ["chen", "wang"]


async def test_add_signer_before_after_and_to_an_all_of_set(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang, chen, zhou = [await card_server.client(n) for n in ("li", "wang", "chen", "zhou")]
    card_id = await push(oa, oa_card("add-1", ["li", "wang"]), ["li", "wang"])
    await act(li, card_id, "add", {"user": "chen", "position": "before"})
    assert await todo_ids(chen) == [card_id] and await todo_ids(li) == []
    await act(chen, card_id, "add", {"user": "zhou", "position": "after"})
    view = await card_event(wang, card_id, 3)
    assert view["policy"]["actors"] == ["chen", "zhou", "li", "wang"]
    assert view["actionable_by"] == ["chen"]
    for who in (chen, zhou, li):
        assert (await act(who, card_id, "approve"))["state"] == "open"
    assert (await act(wang, card_id, "approve"))["state"] == "approved"
    await wait_for(lambda: len(calls(stub, card_id)) == 6)
    # Callbacks of one card may arrive in any order (each is retried on its own);
    # the version each one created orders them.
    kinds = [(c["kind"], c["target"]) for c in sorted(calls(stub, card_id), key=by_version)]
    assert kinds[:2] == [
        ("add_signer", {"user": "chen", "position": "before"}),
        ("add_signer", {"user": "zhou", "position": "after"}),
    ]
    # all-of: the added signer must approve too; no position is taken
    all_id = await push(oa, oa_card("add-2", ["li", "wang"], "all"), ["li", "wang"])
    bad = await refused(li, all_id, "add", target={"user": "chen", "position": "before"})
    assert (bad.code, bad.field) == ("invalid_field", "target.position")
    await act(li, all_id, "add", {"user": "chen"})
    await act(li, all_id, "approve")
    assert (await act(wang, all_id, "approve"))["state"] == "open"
    assert (await act(chen, all_id, "approve"))["state"] == "approved"


async def test_return_to_a_step_voids_later_decisions_and_return_home_ends_returned(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang, zhao = [await card_server.client(n) for n in ("li", "wang", "zhao")]
    names = ["li", "wang", "zhao"]
    card_id = await push(oa, oa_card("back-1", names), names)
    await act(li, card_id, "approve")
    await act(wang, card_id, "approve")
    no_reason = await refused(zhao, card_id, "back", target={"step": 0})
    assert (no_reason.code, no_reason.field) == ("invalid_field", "inputs.comment")
    back = await act(zhao, card_id, "back", {"step": 0}, comment="附件不全")
    assert back["state"] == "open"
    assert await todo_ids(li) == [card_id] and await todo_ids(zhao) == []
    for c in (li, wang, zhao):
        view = await card_event(c, card_id, back["version"])
        assert view["actionable_by"] == ["li"] and view["decisions"] == []
        assert [(t["actor"], t["kind"], t["voided"]) for t in view["trail"]] == [
            ("li", "decision", True),
            ("wang", "decision", True),
            ("zhao", "return", False),
        ]
        assert view["trail"][2]["target"] == {"to": "step", "step": 0, "user": "li"}
    # the voided approvals do not count: wang must approve again after li
    assert (await refused(wang, card_id, "approve")).code == "not_your_turn"
    await act(li, card_id, "approve")
    await act(wang, card_id, "approve")
    home = await act(zhao, card_id, "home", comment="请重新拟稿")
    assert (home["state"], home["decided_by"]) == ("returned", "zhao")
    assert (await refused(li, card_id, "read")).code == "card_decided"
    for c in (li, wang, zhao):
        assert await todo_ids(c) == []
    await wait_for(lambda: len(calls(stub, card_id)) == 6)
    cbs = sorted(calls(stub, card_id), key=by_version)
    assert (cbs[2]["kind"], cbs[2]["target"], cbs[2]["inputs"]) == (
        "return",
        {"to": "step", "step": 0, "user": "li"},
        {"comment": "附件不全"},
    )
    assert (cbs[5]["kind"], cbs[5]["state"], cbs[5]["target"]) == (
        "return",
        "returned",
        {"to": "initiator"},
    )
    # the app cannot reopen or re-end a returned card by PATCH, but may update it
    after = await oa.update_card("back-1", state="closed", status={"text": "已退回"})
    assert after["state"] == "returned"


async def test_a_link_button_is_not_acted_on_and_makes_no_callback(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li = await card_server.client("li")
    await card_server.users("wang")
    card_id = await push(oa, oa_card("link-1", ["li", "wang"]), ["li", "wang"])
    view = (await li.request("card.get", card_id=card_id))["actions"]
    assert {"id": "open", "kind": "link", "url": "https://oa.example.gov.cn/doc/7"}.items() <= (
        next(a for a in view if a["id"] == "open").items()
    )
    e = await refused(li, card_id, "open")
    assert (e.code, e.field) == ("invalid_field", "action")
    await asyncio.sleep(0.3)
    assert stub.hits == 0 and (await oa.get_card("link-1"))["version"] == 1
    for url in ("javascript:alert(1)", "data:text/html,x", "https://a.gov.cn@evil.example/"):
        card = oa_card("link-2", ["li"])
        card["actions"][-1]["url"] = url
        with pytest.raises(BusinessError) as info:
            await oa.push_card(card, users=["li"])
        assert (info.value.code, info.value.field) == ("invalid_field", "card.actions[6].url")


async def test_bad_targets_get_stable_codes_and_change_nothing(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li, wang = [await card_server.client(n) for n in ("li", "wang")]
    await card_server.users("chen", "mallory")
    card_id = await push(oa, oa_card("bad-1", ["li", "wang"]), ["li", "wang"])
    await act(li, card_id, "approve")  # wang is at step 1
    await wait_for(lambda: stub.hits == 1)
    before = await oa.get_card("bad-1")
    cases = [
        ("give", {"user": "nobody"}, {}, "no_such_user", "target.user"),
        ("give", None, {}, "invalid_field", "target.user"),
        ("give", {"user": "li"}, {}, "already_actor", None),
        ("give", {"user": "wang"}, {}, "already_actor", None),
        ("add", {"user": "chen"}, {}, "invalid_field", "target.position"),
        ("back", {"step": 9}, {"comment": "x"}, "no_such_step", None),
        ("back", {"step": 1}, {"comment": "x"}, "step_changed", None),
        ("back", {"step": "0"}, {"comment": "x"}, "invalid_field", "target.step"),
        ("approve", {"user": "chen"}, {}, "invalid_field", "target.user"),
    ]
    for action, target, inputs, code, field in cases:
        e = await refused(wang, card_id, action, target=target, **inputs)
        assert (e.code, e.field) == (code, field), (action, target)
    # outside the app's scope: a second app that may reach li and wang only
    await register_app(
        card_server.world.http_url, stub, scope=["user:li", "user:wang"], app_id="narrow"
    )
    narrow = BusinessClient(card_server.world.http_url, "narrow", stub.secret)
    try:
        scoped = await push(narrow, oa_card("bad-2", ["li", "wang"]), ["li", "wang"])
        e = await refused(li, scoped, "give", target={"user": "mallory"})
        assert (e.code, e.field) == ("out_of_scope", "target.user")
        e = await refused(li, scoped, "add", target={"user": "chen", "position": "after"})
        assert (e.code, e.field) == ("out_of_scope", "target.user")
        assert (await narrow.get_card("bad-2"))["version"] == 1
    finally:
        await narrow.close()
    after = await oa.get_card("bad-1")
    assert (after["version"], after["policy"], after["trail"]) == (
        before["version"],
        before["policy"],
        before["trail"],
    )
    assert await todo_ids(wang) == [card_id]
    await asyncio.sleep(0.2)
    assert stub.hits == 1


async def _one_race(
    oa: BusinessClient,
    li1: Client,
    li2: Client,
    track: str,
    policy: str,
) -> tuple[str, str, str]:
    """li's 转交 to chen (device 1) against li's 同意 (device 2): who won, the loser's code."""
    card_id = await push(oa, oa_card(track, ["li", "wang"], policy), ["li", "wang"])

    async def press(c: Client, action: str, target: dict[str, Any] | None) -> Any:
        try:
            return await act(c, card_id, action, target)
        except ServerError as e:
            return e

    give, approve = await asyncio.gather(
        press(li1, "give", {"user": "chen"}), press(li2, "approve", None)
    )
    results = {"give": give, "approve": approve}
    wins = [k for k, r in results.items() if isinstance(r, dict)]
    losses = [r for r in results.values() if isinstance(r, ServerError)]
    assert len(wins) == 1 and len(losses) == 1, results
    return card_id, wins[0], losses[0].code


@pytest.mark.slow
async def test_transfer_and_approve_race_on_one_step_has_exactly_one_outcome(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li1, li2 = await card_server.client("li", "d1"), await card_server.client("li", "d2")
    await card_server.users("wang", "chen")
    runs = [(f"race-{i}", ("any", "sequential")[i % 2]) for i in range(24)]
    outcomes = await asyncio.gather(*(_one_race(oa, li1, li2, t, p) for t, p in runs))
    expected_loss = {
        ("give", "any"): "not_actor",
        ("give", "sequential"): "not_actor",
        ("approve", "any"): "card_decided",
        ("approve", "sequential"): "not_your_turn",
    }
    for (_, winner, code), (track, policy) in zip(outcomes, runs, strict=True):
        assert code == expected_loss[(winner, policy)], (track, winner, code)
        view = await oa.get_card(track)
        assert view["version"] == 2  # one accepted act, one new version
        if winner == "give":
            assert view["policy"]["actors"] == ["chen", "wang"] and view["decisions"] == []
        else:
            assert view["policy"]["actors"] == ["li", "wang"]
            assert [d["actor"] for d in view["decisions"]] == ["li"]
    await wait_for(lambda: len(stub.actions) == len(runs), timeout=15)
    await asyncio.sleep(0.3)
    by_card: dict[str, int] = {}
    for a in stub.actions:
        by_card[a.card_id] = by_card.get(a.card_id, 0) + 1
    assert sorted(by_card.values()) == [1] * len(runs)  # exactly one callback per card
    assert stub.hits == len(runs)


async def _press(c: Client, card_id: str, action: str, **kw: Any) -> Any:
    try:
        return await act(c, card_id, action, **kw)
    except ServerError as e:
        return e


@pytest.mark.slow
async def test_return_and_approve_from_two_devices_one_wins(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li = await card_server.client("li")
    w1, w2 = await card_server.client("wang", "d1"), await card_server.client("wang", "d2")
    for i in range(12):
        card_id = await push(oa, oa_card(f"rb-{i}", ["li", "wang"]), ["li", "wang"])
        await act(li, card_id, "approve")

        back, ok = await asyncio.gather(
            _press(w1, card_id, "back", target={"step": 0}, comment="重新核对"),
            _press(w2, card_id, "approve"),
        )
        view = await oa.get_card(f"rb-{i}")
        assert view["version"] == 3  # li's approval and exactly one of the two
        if isinstance(ok, dict):  # 同意 first: the card is decided, the return too late
            assert isinstance(back, ServerError) and back.code == "card_decided", back
            assert view["state"] == "approved"
        else:  # 退回 first: wang's step is no longer current
            assert isinstance(ok, ServerError) and ok.code == "not_your_turn", ok
            assert isinstance(back, dict)
            assert view["state"] == "open" and view["actionable_by"] == ["li"]
    await wait_for(lambda: stub.hits == 24, timeout=15)
