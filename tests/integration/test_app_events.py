"""App events (docs/cards.md "App events"): a real server, a real HTTP business system.

The business side here is an aiohttp server on loopback that verifies every
delivery with the SDK (``parse_delivery``) and keeps each one it saw, repeats
included, so a test can tell "delivered once" (one ``event_id``) from
"received once" (one POST).
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from imserver.app import build_world, start_world, stop_world
from imserver.bus.local import LocalBus
from imserver.config import ConfigError
from imserver_sdk import AppEvent, AppStream, BusinessClient, CallbackAction, parse_delivery
from imserver_sdk.signing import SignatureError
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, approval_card
from tests.support import Harness

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
ALL_EVENTS = ["overdue", "escalated", "reminded", "ding_confirmed", "card_read", "delivered"]


class EventStub:
    """A business system: verifies and records every delivery; can fail on purpose."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.secret = secrets.token_urlsafe(32)
        self.seen: list[AppEvent | CallbackAction] = []  # verified deliveries, repeats included
        self.fail_next = 0  # answer 500 after recording this many deliveries
        self.down = False  # answer 503 without looking
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _route(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.down:
            return web.Response(status=503)
        try:
            item = parse_delivery(self.secret, request.headers, body)
        except SignatureError as e:
            return web.json_response({"error": {"code": e.code}}, status=401)
        self.seen.append(item)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500, text="business system hiccup")
        return web.json_response({})

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/callback", self._route)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    def events(self) -> list[AppEvent]:
        """Events as the business side keeps them: one per ``event_id``."""
        unique: dict[str, AppEvent] = {}
        for item in self.seen:
            if isinstance(item, AppEvent):
                unique.setdefault(item.event_id, item)
        return list(unique.values())

    def named(self, event: str) -> list[AppEvent]:
        return [e for e in self.events() if e.event == event]


@pytest.fixture
async def stubs() -> AsyncIterator[list[EventStub]]:
    made: list[EventStub] = []
    yield made
    for s in made:
        await s.stop()


async def new_stub(stubs: list[EventStub], app_id: str) -> EventStub:
    s = EventStub(app_id)
    await s.start()
    stubs.append(s)
    return s


async def admin(h: Harness, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{h.world.http_url}{path}", headers=AUTH, json=body) as r,
    ):
        return r.status, await r.json()


async def register(h: Harness, stub: EventStub, events: list[str] | None) -> None:
    body: dict[str, Any] = {
        "app_id": stub.app_id,
        "secret": stub.secret,
        "callback_url": stub.url,
        "scope": ["*"],
    }
    if events is not None:
        body["events"] = events
    status, answer = await admin(h, "POST", "/admin/v1/apps", body)
    assert status == 201, answer


async def wait_for(pred: Any, timeout: float = 8.0) -> None:
    """Poll ``pred`` (plain or async) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if await got if inspect.isawaitable(got) else got:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def event_rows(h: Harness, app_id: str) -> list[Any]:
    rows = []
    for state in ("pending", "delivered", "failed"):
        rows += await h.world.store.list_callbacks(state, 500)
    return [r for r in rows if r.kind == "event" and r.app_id == app_id]


def metric(h: Harness, event: str, outcome: str) -> float:
    value = h.world.metrics.registry.get_sample_value(
        "imserver_app_events_total", {"event": event, "outcome": outcome}
    )
    return value or 0.0


async def card_server(start_server: Any, **cards: Any) -> Harness:
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={**CARD_SETTINGS, **cards}
    )
    return server


# --------------------------------------------------------------------------- the six events


async def test_each_event_of_a_card_reaches_its_app_once_signed(
    start_server: Any, stubs: list[EventStub]
) -> None:
    server = await card_server(start_server, reminder_offsets_s=(1,))
    oa = await new_stub(stubs, "oa")
    hr = await new_stub(stubs, "hr")
    await register(server, oa, ALL_EVENTS)
    await register(server, hr, ALL_EVENTS)  # subscribed too, but it is not hr's card
    oa.fail_next = 1  # the first delivery is seen, then answered 500: it comes again
    li = await server.client("li")
    await server.users("boss")
    due = int((time.time() + 2.5) * 1000)  # reminder at due-1 s; overdue + escalation at due
    async with BusinessClient(server.world.http_url, "oa", oa.secret) as biz:
        card = approval_card("t1", ["li"], urgent=True, due_at=due, escalate_to="boss")
        card_id = (await biz.push_card(card, users=["li"]))["card_id"]
        msg = await li.next_event("message", predicate=lambda e: e.data["kind"] == "card")
        conv, seq = msg.data["conv"], msg.data["seq"]
        await wait_for(lambda: oa.named("delivered"))
        await li.read(conv, seq)
        await li.confirm_ding(conv, seq)
        await wait_for(
            lambda: (
                {"card_read", "ding_confirmed", "reminded", "overdue", "escalated"}
                <= {e.event for e in oa.events()}
            )
        )
        boss = await server.client("boss")  # offline at escalation: its sync hands the card over
        await wait_for(lambda: len(oa.named("delivered")) == 2)
        # Nothing is reported twice: reading, confirming and syncing again add no event.
        await li.read(conv, seq)
        again = await server.client("li", device="d2")
        await again.request("sync", since={})
        await asyncio.sleep(0.5)
        assert (await biz.get_card("t1"))["callback"] == "none"  # events leave it alone
    _ = boss

    events = {e.event: e for e in oa.events() if e.event != "delivered"}
    assert len(oa.events()) == 7  # 5 + delivered to li (push) and to boss (sync)
    for e in oa.events():
        assert (e.app_id, e.card_id, e.out_track_id, e.notice_id) == ("oa", card_id, "t1", None)
        assert e.raw["type"] == "event" and e.raw["event_id"] == e.event_id
    delivered = {e.user: e.raw["via"] for e in oa.named("delivered")}
    # On a Redis bus the first message of a new conversation reaches the node by its
    # gap fill from the store, which reports "sync" (docs/cards.md "App events").
    live = ("push",) if isinstance(server.world.bus, LocalBus) else ("push", "sync")
    assert delivered["li"] in live and delivered["boss"] == "sync" and len(delivered) == 2
    read = events["card_read"]
    assert (read.user, read.raw["conv"], read.raw["seq"]) == ("li", conv, seq)
    assert (events["ding_confirmed"].user, events["ding_confirmed"].raw["seq"]) == ("li", seq)
    assert events["reminded"].raw["pending"] == ["li"] and events["reminded"].at < due
    assert events["overdue"].raw["due_at"] == due and events["overdue"].at >= due
    assert events["escalated"].raw["to"] == "boss"
    assert events["escalated"].raw["state"] == "escalated"
    # The forced retry: one event_id was POSTed twice, and counted once.
    ids = [i.event_id for i in oa.seen if isinstance(i, AppEvent)]
    assert len(ids) == 8 and len(set(ids)) == 7
    assert hr.seen == []  # a card of app oa never produces events for app hr
    assert await event_rows(server, "hr") == []
    assert metric(server, "overdue", "delivered") == 1.0
    assert sum(metric(server, e, "retry") for e in ALL_EVENTS) == 1.0
    assert all(r.state == "delivered" for r in await event_rows(server, "oa"))


async def test_notice_events_name_the_notice(start_server: Any, stubs: list[EventStub]) -> None:
    server = await card_server(start_server)
    oa = await new_stub(stubs, "oa")
    await register(server, oa, ["delivered", "card_read", "ding_confirmed"])
    li = await server.client("li")
    async with BusinessClient(server.world.http_url, "oa", oa.secret) as biz:
        sent = await biz.send_notice("防汛通知", "今晚 **18:00** 到岗", users=["li"], urgent=True)
    msg = await li.next_event("message", predicate=lambda e: e.data["kind"] == "notice")
    await li.read(msg.data["conv"], msg.data["seq"])
    await li.confirm_ding(msg.data["conv"], msg.data["seq"])
    await wait_for(lambda: len(oa.events()) == 3)
    await asyncio.sleep(0.3)
    assert sorted(e.event for e in oa.events()) == ["card_read", "delivered", "ding_confirmed"]
    for e in oa.events():
        assert (e.notice_id, e.card_id, e.user) == (sent["notice_id"], None, "li")


async def test_holder_events_of_a_card_sent_to_many(
    start_server: Any, stubs: list[EventStub]
) -> None:
    """A broadcast card (one message in ``b:<app>:…``): delivered and read per holder."""
    server = await card_server(start_server, broadcast_min_holders=3)
    oa = await new_stub(stubs, "oa")
    await register(server, oa, ["delivered", "card_read"])
    li, wang = await server.client("li"), await server.client("wang")
    await server.users("zhao")
    async with BusinessClient(server.world.http_url, "oa", oa.secret) as biz:
        card_id = (await biz.push_card(approval_card("b1", ["li"]), users=["li", "wang", "zhao"]))[
            "card_id"
        ]
    msg = await li.next_event("message", predicate=lambda e: e.data["kind"] == "card")
    assert msg.data["conv"].startswith("b:oa:")
    await li.read(msg.data["conv"], msg.data["seq"])
    await wait_for(lambda: len(oa.events()) == 3)  # delivered to li and wang, read by li
    zhao = await server.client("zhao")  # offline at the push: delivered by sync
    await zhao.next_event("message", predicate=lambda e: e.data["kind"] == "card")
    await wait_for(lambda: len(oa.events()) == 4)
    await asyncio.sleep(0.3)
    got = sorted((e.event, e.user, e.card_id) for e in oa.events())
    assert got == [
        ("card_read", "li", card_id),
        ("delivered", "li", card_id),
        ("delivered", "wang", card_id),
        ("delivered", "zhao", card_id),
    ]
    assert wang is not None


async def test_events_reach_a_stream_only_app_over_its_stream(
    start_server: Any, stubs: list[EventStub]
) -> None:
    server = await card_server(start_server)
    oa = EventStub("oa")  # only for its secret: this app takes no HTTP
    status, answer = await admin(
        server,
        "POST",
        "/admin/v1/apps",
        {
            "app_id": "oa",
            "secret": oa.secret,
            "callback_url": "",
            "scope": ["*"],
            "events": ["delivered", "card_read"],
        },
    )
    assert status == 201, answer
    got: list[AppEvent] = []

    async def on_action(a: CallbackAction) -> None:
        raise AssertionError("no action was taken")

    async def on_event(doc: dict[str, Any]) -> None:
        got.append(AppEvent.from_dict(doc))  # the stream verified the signature

    stream = AppStream(server.world.http_url, "oa", oa.secret, on_action, on_event=on_event)
    task = asyncio.create_task(stream.run())
    try:
        await asyncio.wait_for(stream.connected.wait(), 5)
        li = await server.client("li")
        async with BusinessClient(server.world.http_url, "oa", oa.secret) as biz:
            card_id = (await biz.push_card(approval_card("s1", ["li"]), users=["li"]))["card_id"]
        msg = await li.next_event("message", predicate=lambda e: e.data["kind"] == "card")
        await li.read(msg.data["conv"], msg.data["seq"])
        await wait_for(lambda: len(got) == 2)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sorted(e.event for e in got) == ["card_read", "delivered"]
    assert {(e.card_id, e.user) for e in got} == {(card_id, "li")}


# --------------------------------------------------------------------------- who gets events


async def test_an_app_that_did_not_subscribe_gets_no_events(
    start_server: Any, stubs: list[EventStub]
) -> None:
    server = await card_server(start_server, reminder_offsets_s=(1,))
    quiet = await new_stub(stubs, "quiet")
    some = await new_stub(stubs, "some")
    await register(server, quiet, None)  # no "events": the default, none
    await register(server, some, ["overdue"])  # one event only
    li = await server.client("li")
    due = int((time.time() + 1.5) * 1000)
    for stub in (quiet, some):
        async with BusinessClient(server.world.http_url, stub.app_id, stub.secret) as biz:
            await biz.push_card(
                approval_card(f"{stub.app_id}-1", ["li"], urgent=True, due_at=due), users=["li"]
            )
    for _ in range(2):
        msg = await li.next_event("message", predicate=lambda e: e.data["kind"] == "card")
        await li.read(msg.data["conv"], msg.data["seq"])
        await li.confirm_ding(msg.data["conv"], msg.data["seq"])
    await wait_for(lambda: some.named("overdue"))
    await asyncio.sleep(0.5)
    assert quiet.seen == [] and await event_rows(server, "quiet") == []  # no outbox growth
    assert [e.event for e in some.events()] == ["overdue"]
    status, listed = await admin(server, "GET", "/admin/v1/apps")
    assert status == 200
    by_id = {a["app_id"]: a for a in listed["apps"]}
    assert (by_id["quiet"]["events"], by_id["some"]["events"]) == ([], ["overdue"])


async def test_an_event_that_fails_for_good_does_not_mark_the_card(
    start_server: Any, stubs: list[EventStub]
) -> None:
    server = await card_server(start_server)
    oa = await new_stub(stubs, "oa")
    await register(server, oa, ["delivered"])
    oa.down = True
    li = await server.client("li")
    async with BusinessClient(server.world.http_url, "oa", oa.secret) as biz:
        await biz.push_card(approval_card("f1", ["li"]), users=["li"])

        async def failed() -> bool:
            return [r.state for r in await event_rows(server, "oa")] == ["failed"]

        await wait_for(failed)
        assert (await biz.get_card("f1"))["callback"] == "none"  # a failed event is not a callback
    assert metric(server, "delivered", "failed") == 1.0
    _ = li


# --------------------------------------------------------------------------- restarts


async def test_pending_events_survive_a_restart(start_server: Any, stubs: list[EventStub]) -> None:
    server = await card_server(start_server)
    oa = await new_stub(stubs, "oa")
    await register(server, oa, ["delivered", "card_read"])
    # This node's dispatcher stops first (as if the node died before sending): the
    # events wait in the outbox, none half-sent under a lease.
    await server.world.callbacks.stop()
    li = await server.client("li")
    async with BusinessClient(server.world.http_url, "oa", oa.secret) as biz:
        await biz.push_card(approval_card("r1", ["li"]), users=["li"])
    msg = await li.next_event("message", predicate=lambda e: e.data["kind"] == "card")
    await li.read(msg.data["conv"], msg.data["seq"])

    async def two_pending() -> bool:
        return [r.state for r in await event_rows(server, "oa")] == ["pending", "pending"]

    await wait_for(two_pending)
    assert oa.seen == []
    config = server.world.config
    await server.close()
    await stop_world(server.world)
    world = build_world(config)
    await start_world(world)
    server.world = world
    await wait_for(lambda: len(oa.events()) == 2)
    await asyncio.sleep(0.3)
    assert sorted(e.event for e in oa.events()) == ["card_read", "delivered"]
    assert len(oa.seen) == 2  # each once, after the restart
    assert all(r.state == "delivered" for r in await event_rows(server, "oa"))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ("overdue", "app.events"),
        (["overdue", "nope"], "app.events[1]"),
        ([{"event": "overdue"}], "app.events[0]"),
        ([None], "app.events[0]"),
    ],
)
async def test_bad_subscriptions_are_refused_and_store_nothing(
    start_server: Any, events: Any, field: str
) -> None:
    server = await card_server(start_server)
    body = {
        "app_id": "bad",
        "secret": secrets.token_urlsafe(32),
        "callback_url": "http://127.0.0.1:9/cb",
        "scope": ["*"],
        "events": events,
    }
    status, answer = await admin(server, "POST", "/admin/v1/apps", body)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (
        400,
        "invalid_field",
        field,
    )
    assert "overdue" in answer["error"]["message"]  # says which names are known
    assert (await admin(server, "GET", "/admin/v1/apps/bad"))[0] == 404
    assert [r for r in await server.world.store.audit.records() if r.target == "bad"] == []


def test_a_bad_subscription_in_the_apps_file_stops_the_start(tmp_path: Path) -> None:
    from imserver.apps_file import load_apps_file

    apps = tmp_path / "apps.toml"
    apps.write_text(
        f'[[app]]\napp_id = "hr"\nsecret = "{secrets.token_urlsafe(32)}"\n'
        'callback_url = "http://127.0.0.1:9/cb"\nscope = ["*"]\nevents = ["overdue", "late"]\n'
    )
    with pytest.raises(ConfigError) as e:
        load_apps_file(apps)
    assert "app[0].events[1]" in str(e.value)


async def test_subscriptions_are_shown_and_audited(
    start_server: Any, stubs: list[EventStub], tmp_path: Path
) -> None:
    server = await card_server(start_server)
    oa = await new_stub(stubs, "oa")
    await register(server, oa, ["overdue", "delivered", "overdue"])  # repeats collapse
    status, shown = await admin(server, "GET", "/admin/v1/apps/oa")
    assert (status, shown["events"]) == (200, ["overdue", "delivered"])
    [record] = [
        r for r in await server.world.store.audit.records() if r.action == "admin.app_upsert"
    ]
    assert record.details["events"] == ["overdue", "delivered"]
    # The same from cards.apps_file.
    apps = tmp_path / "apps.toml"
    apps.write_text(
        f'[[app]]\napp_id = "hr"\nsecret = "{secrets.token_urlsafe(32)}"\n'
        'callback_url = "http://127.0.0.1:9/cb"\nscope = ["*"]\nevents = ["card_read"]\n'
    )
    h: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={"apps_file": str(apps)}
    )
    status, shown = await admin(h, "GET", "/admin/v1/apps/hr")
    assert (status, shown["events"]) == (200, ["card_read"])
    [record] = [r for r in await h.world.store.audit.records() if r.action == "admin.app_upsert"]
    assert (record.actor, record.details["events"]) == ("apps_file", ["card_read"])
