"""App scope covers every person a card names, not only its recipients (issue #12 item 1).

Real server, real business-system stub, real directory sync: a push, a PATCH,
a callback's ``card_update`` or a notice naming someone outside the app's
scope is refused with ``out_of_scope`` and the field path, and nothing is
stored; an escalation whose target has left the scope since the push gives
nobody the card and is marked refused on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from imserver_sdk import BusinessClient, BusinessError
from tests.cards_support import ADMIN_KEY, BusinessStub, approval_card, register_app
from tests.support import Harness

LATER = int((time.time() + 86_400) * 1000)

UNITS = [
    {"op": "unit", "id": "jx", "name": "江西省", "level": "province"},
    {"op": "unit", "id": "ca", "name": "甲市", "level": "city", "parent": "jx"},
    {"op": "unit", "id": "cb", "name": "乙市", "level": "city", "parent": "jx"},
    {"op": "unit", "id": "ca-1", "name": "甲县", "level": "county", "parent": "ca"},
]


def member(user: str, unit: str) -> dict[str, Any]:
    return {
        "op": "member",
        "user": user,
        "name": user,
        "units": [{"unit": unit, "title": "科员", "leader": False}],
    }


async def sync_directory(server: Harness, lines: list[dict[str, Any]]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/admin/v1/directory/sync?mode=full",
            data=b"".join(orjson.dumps(line) + b"\n" for line in lines),
            headers={
                "Authorization": f"Bearer {ADMIN_KEY}",
                "Content-Type": "application/x-ndjson",
            },
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def wait_for(pred: Callable[[], Awaitable[bool]], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def hotline(card_server: Harness, stub: BusinessStub) -> AsyncIterator[BusinessClient]:
    """App "hotline", scoped to li and wang only."""
    await card_server.users("li", "wang", "bob")
    await register_app(
        card_server.world.http_url, stub, scope=["user:li", "user:wang"], app_id="hotline"
    )
    async with BusinessClient(card_server.world.http_url, "hotline", stub.secret) as client:
        yield client


async def nothing_stored(server: Harness, app_id: str, track: str) -> None:
    store = server.world.store
    assert await store.get_card_by_track(app_id, track) is None
    for user in ("li", "wang", "bob"):
        assert await store.get_conversation(f"n:{app_id}:{user}") is None


@pytest.mark.parametrize(
    ("card", "users", "groups", "field"),
    [
        (
            approval_card("t", ["li"], due_at=LATER, escalate_to="bob"),
            ["li"],
            [],
            "card.escalate_to",
        ),
        (approval_card("t", ["li", "bob"]), ["li"], [], "card.policy.actors[1]"),
        (
            approval_card("t", ["li", "wang", "bob"], policy="sequential"),  # the third step
            ["li", "wang"],
            [],
            "card.policy.actors[2]",
        ),
        (approval_card("t", ["li"], policy="all"), ["li", "bob"], [], "to.users[1]"),
        (approval_card("t", ["li"]), ["li"], ["g:elsewhere"], "to.groups[0]"),
    ],
)
async def test_push_naming_anyone_outside_the_scope_is_refused_with_the_path(
    card_server: Harness,
    hotline: BusinessClient,
    card: dict[str, Any],
    users: list[str],
    groups: list[str],
    field: str,
) -> None:
    with pytest.raises(BusinessError) as info:
        await hotline.push_card(card, users=users, groups=groups)
    assert (info.value.status, info.value.code, info.value.field) == (403, "out_of_scope", field)
    assert info.value.body["details"]["fields"] == [field]
    assert field in info.value.message
    await nothing_stored(card_server, "hotline", "t")


async def test_notice_to_someone_outside_the_scope_is_refused(
    card_server: Harness, hotline: BusinessClient
) -> None:
    with pytest.raises(BusinessError) as info:
        await hotline.request(
            "POST",
            "/api/v1/apps/notices",
            {"title": "通知", "text": "会议改期", "to": {"users": ["li", "bob"]}},
        )
    assert (info.value.status, info.value.code, info.value.field) == (
        403,
        "out_of_scope",
        "to.users[1]",
    )
    assert info.value.body["details"]["outside"] == ["bob"]
    await nothing_stored(card_server, "hotline", "-")


async def test_patch_adding_an_out_of_scope_escalation_is_refused(
    card_server: Harness, hotline: BusinessClient
) -> None:
    await hotline.push_card(approval_card("p", ["li"], due_at=LATER), users=["li"])
    before = await card_server.world.store.get_card_by_track("hotline", "p")
    with pytest.raises(BusinessError) as info:
        await hotline.update_card("p", escalate_to="bob", title="改派")
    assert (info.value.status, info.value.code, info.value.field) == (
        403,
        "out_of_scope",
        "update.escalate_to",
    )
    assert await card_server.world.store.get_card_by_track("hotline", "p") == before
    assert before is not None and before.doc["escalate_to"] is None
    ok = await hotline.update_card("p", escalate_to="wang")  # inside the scope: fine
    assert ok["version"] == before.version + 1


async def test_callback_answer_naming_someone_outside_the_scope_is_dropped(
    card_server: Harness, hotline: BusinessClient, stub: BusinessStub
) -> None:
    stub.answer = lambda action: {"escalate_to": "bob", "title": "已转办"}
    li = await card_server.client("li")
    pushed = await hotline.push_card(
        approval_card("cb", ["li", "wang"], policy="all", due_at=LATER), users=["li", "wang"]
    )
    await li.request("card.act", card_id=pushed["card_id"], action="approve", action_id="a1")
    await asyncio.wait_for(stub.got_action.wait(), 5)
    store = card_server.world.store

    async def settled() -> bool:
        card = await store.get_card(pushed["card_id"])
        return card is not None and card.callback == "ok"

    await wait_for(settled)
    card = await store.get_card(pushed["card_id"])
    assert card is not None
    assert card.doc["escalate_to"] is None and card.doc["title"] != "已转办"  # dropped whole
    assert set(await store.card_holders(card.id)) == {"li", "wang"}
    # The control: an answer inside the scope is applied.
    stub.answer = lambda action: {"escalate_to": "wang", "title": "已转办"}
    wang = await card_server.client("wang")
    await wang.request("card.act", card_id=card.id, action="approve", action_id="a2")

    async def applied() -> bool:
        fresh = await store.get_card(card.id)
        return fresh is not None and fresh.doc["title"] == "已转办"

    await wait_for(applied)


async def test_a_member_of_a_scoped_unit_is_in_scope_and_others_are_not(
    card_server: Harness, stub: BusinessStub
) -> None:
    await sync_directory(
        card_server, [*UNITS, member("li", "ca"), member("dan", "ca-1"), member("carol", "cb")]
    )
    await register_app(card_server.world.http_url, stub, scope=["unit:ca"], app_id="county")
    async with BusinessClient(card_server.world.http_url, "county", stub.secret) as county:
        # dan is in 甲县, under the scoped 甲市: reachable by name and as escalation target.
        ok = await county.push_card(
            approval_card("u1", ["dan"], due_at=LATER, escalate_to="li"), users=["dan"]
        )
        assert ok["holders"] == 1
        for to, field in [
            ({"users": ["dan", "carol"]}, "to.users[1]"),
            ({"units": [{"id": "ca-1"}, {"id": "cb"}]}, "to.units[1].id"),
        ]:
            with pytest.raises(BusinessError) as info:
                await county.request(
                    "POST", "/api/v1/apps/cards", {"card": approval_card("u2", ["dan"]), "to": to}
                )
            assert (info.value.code, info.value.field) == ("out_of_scope", field)
        assert await card_server.world.store.get_card_by_track("county", "u2") is None


async def test_escalation_to_someone_who_left_the_scope_is_refused_and_shown(
    card_server: Harness, stub: BusinessStub, hotline: BusinessClient
) -> None:
    store = card_server.world.store
    await sync_directory(
        card_server, [*UNITS, member("li", "ca"), member("bob", "ca"), member("dan", "ca")]
    )
    # "user:li" too, so the pushes below also pass the scope rule of old releases.
    await register_app(
        card_server.world.http_url, stub, scope=["user:li", "unit:ca"], app_id="county"
    )
    await register_app(
        card_server.world.http_url, stub, scope=["user:li", "user:wang"], app_id="hotline"
    )
    due = int((time.time() + 2.0) * 1000)
    async with BusinessClient(card_server.world.http_url, "county", stub.secret) as county:
        moved = await county.push_card(
            approval_card("moved", ["li"], due_at=due, escalate_to="bob"), users=["li"]
        )
        stays = await county.push_card(
            approval_card("stays", ["li"], due_at=due, escalate_to="dan"), users=["li"]
        )
    shrunk = await hotline.push_card(
        approval_card("shrunk", ["li"], due_at=due, escalate_to="wang"), users=["li"]
    )
    # Before the deadline: bob moves to 乙市, and hotline loses wang.
    await sync_directory(
        card_server, [*UNITS, member("li", "ca"), member("bob", "cb"), member("dan", "ca")]
    )
    await register_app(card_server.world.http_url, stub, scope=["user:li"], app_id="hotline")
    assert time.time() * 1000 < due, "setup took longer than the deadline allows"

    async def escalated_to_dan() -> bool:
        return "dan" in await store.card_holders(stays["card_id"])

    async def both_refused() -> bool:
        cards = [await store.get_card(c["card_id"]) for c in (moved, shrunk)]
        return all(c is not None and "escalation" in c.approval for c in cards)

    await wait_for(escalated_to_dan)  # the control: in-scope escalation still happens
    await wait_for(both_refused)
    for pushed, app_id, target in ((moved, "county", "bob"), (shrunk, "hotline", "wang")):
        assert target not in await store.card_holders(pushed["card_id"])
        assert await store.get_conversation(f"n:{app_id}:{target}") is None  # no 督办 notice
        card = await store.get_card(pushed["card_id"])
        assert card is not None
        view = card_server.world.cards.view(card)
        assert view["escalation"]["to"] == target
        assert view["escalation"]["state"] == "refused"
        assert view["escalation"]["reason"] == "out_of_scope"
        assert view["overdue"] is True
    assert (
        card_server.world.cards.view(
            await store.get_card(stays["card_id"])  # type: ignore[arg-type]
        )["escalation"]
        is None
    )
    refusals = [
        (r.target, r.details["escalate_to"])
        for r in await store.audit.records()
        if r.action == "card.escalation_refused"
    ]
    assert sorted(refusals) == sorted([(moved["card_id"], "bob"), (shrunk["card_id"], "wang")])


async def test_many_named_people_are_placed_in_one_query_with_the_same_answer(
    card_server: Harness, stub: BusinessStub
) -> None:
    """Past ``BULK_MEMBER_QUERY`` names the scoped units' members are read at once."""
    staff = [f"clerk-{i:02d}" for i in range(60)]
    await sync_directory(
        card_server, [*UNITS, *(member(u, "ca-1") for u in staff), member("carol", "cb")]
    )
    await register_app(card_server.world.http_url, stub, scope=["unit:ca"], app_id="county")
    async with BusinessClient(card_server.world.http_url, "county", stub.secret) as county:
        with pytest.raises(BusinessError) as info:
            await county.push_card(approval_card("many", staff[:1]), users=[*staff, "carol"])
        assert (info.value.code, info.value.field) == ("out_of_scope", "to.users[60]")
        assert info.value.body["details"]["outside"] == ["carol"]
        ok = await county.push_card(approval_card("many", staff[:1]), users=staff)
        assert ok["holders"] == 60
