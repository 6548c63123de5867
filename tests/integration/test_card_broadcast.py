"""Cards and notices to many people, stored once (docs/cards.md, "Sent to many").

A push to ``cards.broadcast_min_holders`` users or more (5 here) becomes one
message in the broadcast conversation ``b:<app>:<digest of the member set>``,
fanned out like a group message; each holder's read cursor, todo, DING and
private data stay their own. Real server, real WebSockets, real callbacks, on
both store backends.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from cards.recipients import audience_conv
from imserver_sdk import BusinessClient, Client, ServerError
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card, business
from tests.postgres_support import fresh_dsn
from tests.support import Harness

THRESHOLD = 5
PEOPLE = [f"p{i}" for i in range(7)]  # 7 >= 5: a broadcast
LEADERS = ["p0", "p1"]


@pytest.fixture(params=["sqlite", "postgres"])
async def card_server(request: pytest.FixtureRequest, start_server: Any) -> Harness:
    store: dict[str, Any] = {}
    if request.param == "postgres":
        dsn, _schema = fresh_dsn()  # dropped with the run's database at exit
        store = {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4}
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY},
        cards={**CARD_SETTINGS, "broadcast_min_holders": THRESHOLD},
        store=store,
    )
    return server


@pytest.fixture
async def oa(card_server: Harness, stub: BusinessStub) -> Any:
    client = await business(card_server, stub)
    yield client
    await client.close()


async def card_message(c: Client, card_id: str) -> Any:
    ev = await c.next_event(
        "message",
        predicate=lambda e: e.data["kind"] == "card" and e.data["body"]["card_id"] == card_id,
    )
    return ev.data


async def wait_for(pred: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_a_card_to_many_is_one_message_every_holder_acts_and_converges(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    online = {u: await card_server.client(u) for u in PEOPLE[:-1]}  # the last one is offline
    await card_server.users(PEOPLE[-1])
    stub.answer = lambda a: {"status": {"text": f"已由{a.actor}同意", "color": "green"}}
    pushed = await oa.push_card(approval_card("circ-1", LEADERS), users=PEOPLE)
    assert pushed["holders"] == len(PEOPLE) and not pushed["duplicate"]
    card_id = pushed["card_id"]
    conv = audience_conv("oa", PEOPLE)
    assert conv.startswith("b:oa:")

    seen = [await card_message(c, card_id) for c in online.values()]
    assert {(m["conv"], m["seq"]) for m in seen} == {(conv, 1)}  # one message, one seq
    assert all(m["body"]["card"]["state"] == "open" for m in seen)

    store = card_server.world.store
    stored = await store.messages_after(conv, 0, 10)
    assert [(m.seq, m.kind, m.sender) for m in stored] == [(1, "card", "app:oa")]
    for u in PEOPLE:  # nobody got a message of their own
        assert await store.get_conversation(f"n:oa:{u}") is None
    assert sorted(await store.card_holders(card_id)) == sorted(PEOPLE)

    # The todo is the actors' alone; a holder who is no actor cannot act.
    with pytest.raises(ServerError) as refused:
        await online["p4"].request(
            "card.act", card_id=card_id, action="approve", action_id=uuid.uuid4().hex, inputs={}
        )
    assert refused.value.code == "not_actor"
    result = await online["p1"].request(
        "card.act", card_id=card_id, action="approve", action_id=uuid.uuid4().hex, inputs={}
    )
    assert (result["state"], result["decided_by"]) == ("approved", "p1")
    await wait_for(lambda: len(stub.actions) == 1)
    for _ in range(100):
        final = await oa.get_card("circ-1")
        if final["status"]["text"] == "已由p1同意":
            break
        await asyncio.sleep(0.02)
    for c in online.values():
        ev = await c.next_event(
            "card", predicate=lambda e: e.data["version"] >= final["version"], timeout=5
        )
        assert (ev.data["state"], ev.data["status"]["text"]) == ("approved", "已由p1同意")

    # The offline holder connects: sync hands over the one message at the latest version.
    late = await card_server.client(PEOPLE[-1])
    msg = await card_message(late, card_id)
    assert (msg["conv"], msg["seq"]) == (conv, 1)
    assert msg["body"]["card"]["version"] == final["version"]
    assert msg["body"]["card"]["state"] == "approved"
    page = await late.request("sync", since={}, cards_since=0)
    assert card_id in [c["card_id"] for c in page["cards"]]  # held through the audience
    assert stub.hits == 1


async def test_the_next_card_to_the_same_people_is_the_next_message_of_one_conversation(
    card_server: Harness, oa: BusinessClient
) -> None:
    reader = await card_server.client("p3")
    await card_server.users(*PEOPLE)
    first = await oa.push_card(approval_card("circ-a", LEADERS), users=PEOPLE)
    second = await oa.push_card(approval_card("circ-b", LEADERS), users=list(reversed(PEOPLE)))
    await card_server.users("p9")
    other = await oa.push_card(approval_card("circ-c", LEADERS), users=[*PEOPLE, "p9"])
    got = [await card_message(reader, c["card_id"]) for c in (first, second, other)]
    conv = audience_conv("oa", PEOPLE)
    assert [(m["conv"], m["seq"]) for m in got[:2]] == [(conv, 1), (conv, 2)]
    assert got[2]["conv"] not in (conv,) and got[2]["seq"] == 1  # another member set
    members = await card_server.world.store.members(conv)
    assert sorted(m.user for m in members) == sorted(PEOPLE)

    # Reading is the reader's own: one cursor moved, the others' untouched; who else
    # holds or read the card is not shown to a holder.
    await reader.read(conv, 2)
    status = await reader.read_status(conv, 1)
    assert (status["read"], status["unread"]) == (["p3"], [])
    states = {m.user: m.read_seq for m in await card_server.world.store.members(conv)}
    assert states["p3"] == 2 and {v for u, v in states.items() if u != "p3"} == {0}

    # The conversation is the app's: read-only to its members, closed to everyone else.
    with pytest.raises(ServerError) as e:
        await reader.send_text("收到", conv=conv)
    assert e.value.code == "forbidden"
    outsider = await card_server.client("zz")
    with pytest.raises(ServerError) as e:
        await outsider.history(conv)
    assert e.value.code == "not_member"


async def test_below_the_threshold_each_holder_gets_their_own_notice_conversation(
    card_server: Harness, oa: BusinessClient
) -> None:
    few = PEOPLE[: THRESHOLD - 1]
    clients = [await card_server.client(u) for u in few]
    card_id = (await oa.push_card(approval_card("few", few[:1]), users=few))["card_id"]
    got = [await card_message(c, card_id) for c in clients]
    assert [m["conv"] for m in got] == [f"n:oa:{u}" for u in few]


async def test_private_data_and_ding_stay_per_holder_in_a_broadcast(
    card_server: Harness, oa: BusinessClient
) -> None:
    clients = {u: await card_server.client(u) for u in PEOPLE}
    private = {"p2": {"fields": [{"label": "批注", "value": "只给p2看"}]}}
    pushed = await oa.push_card(
        approval_card("ding-1", LEADERS, urgent=True), users=PEOPLE, private=private
    )
    card_id = pushed["card_id"]
    views = {u: (await card_message(c, card_id)) for u, c in clients.items()}
    for u, v in views.items():  # one stored message; each holder's view is their own
        text = json.dumps(v, ensure_ascii=False)
        assert ("只给p2看" in text) == (u == "p2"), u
    assert {"label": "批注", "value": "只给p2看"}.items() <= next(
        f for f in views["p2"]["body"]["card"]["fields"] if f["label"] == "批注"
    ).items()
    conv, seq = views["p5"]["conv"], views["p5"]["seq"]
    await clients["p5"].confirm_ding(conv, seq)
    card = await oa.get_card("ding-1")
    assert card["ding"]["confirmed"] == ["p5"]
    assert sorted(card["ding"]["unconfirmed"]) == sorted(u for u in PEOPLE if u != "p5")


async def test_a_notice_to_many_is_one_message(card_server: Harness, oa: BusinessClient) -> None:
    clients = [await card_server.client(u) for u in PEOPLE]
    sent = await oa.send_notice("防汛通知", "今晚 **18:00** 到岗", users=PEOPLE)
    assert sent["recipients"] == len(PEOPLE)
    got = [
        (await c.next_event("message", predicate=lambda e: e.data["kind"] == "notice")).data
        for c in clients
    ]
    assert {(m["conv"], m["seq"]) for m in got} == {(audience_conv("oa", PEOPLE), 1)}
    assert got[0]["body"]["notice_id"] == sent["notice_id"]
