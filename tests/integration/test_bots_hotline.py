"""The 12345 hotline bot end to end over real WebSockets: dispatch, claim, transfer, close.

Real server (``start_server``), a real org directory (units with sub-units),
the bot runtime in-process, the 12345 platform played by the signed stub of
``bots/demo/oa_system.py`` (it is generic: signed events out, deduplicated
forwards in), users on the SDK's WebSocket client.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bots.demo.oa_system import OASystem
from bots.runtime.config import BotConfig
from bots.runtime.model import card_track_id, track_id
from bots.runtime.runner import BotRuntime
from imserver_sdk import BusinessClient, Client
from tests.bots_support import assert_refused_and_nothing_pushed
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS
from tests.integration.test_bots_oa import (
    act,
    card_message,
    card_reaching,
    register_app,
    runtime_config,
    until,
)
from tests.support import Harness

#: 新建区 (handlers h1, h2; leader boss) with a township below it (member h3, who
#: holds the case through the unit but does not act), and 青山湖区 to transfer to.
ORG: list[dict[str, Any]] = [
    {"op": "unit", "id": "jx", "name": "江西省", "level": "province"},
    {"op": "unit", "id": "nc", "name": "南昌市", "level": "city", "parent": "jx"},
    {"op": "unit", "id": "xh", "name": "新建区", "level": "county", "parent": "nc"},
    {"op": "unit", "id": "xh-cz", "name": "长征镇", "level": "township", "parent": "xh"},
    {"op": "unit", "id": "qs", "name": "青山湖区", "level": "county", "parent": "nc"},
    {"op": "member", "user": "h1", "name": "李明", "units": [{"unit": "xh"}]},
    {"op": "member", "user": "h2", "name": "王芳", "units": [{"unit": "xh"}]},
    {"op": "member", "user": "boss", "name": "赵局", "units": [{"unit": "xh", "leader": True}]},
    {"op": "member", "user": "h3", "name": "孙强", "units": [{"unit": "xh-cz"}]},
    {"op": "member", "user": "q1", "name": "周敏", "units": [{"unit": "qs"}]},
    {"op": "member", "user": "qboss", "name": "吴局", "units": [{"unit": "qs", "leader": True}]},
]
PHONE = "13812341234"


@dataclass
class HotlineWorld:
    server: Harness
    runtime: BotRuntime
    platform: OASystem  # the 12345 platform's side
    app: BusinessClient

    @property
    def events_url(self) -> str:
        return self.runtime.url("hotline", "events")


async def admin(server: Harness, path: str, body: bytes | dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    kw: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"data": body}
    if not isinstance(body, dict):
        headers["Content-Type"] = "application/x-ndjson"
    async with (
        aiohttp.ClientSession() as s,
        s.post(server.world.http_url + path, headers=headers, **kw) as r,
    ):
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc


async def load_org(server: Harness, lines: list[dict[str, Any]]) -> None:
    body = b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in lines)
    await admin(server, "/admin/v1/directory/sync?mode=full", body)


async def bot_world(
    start_server: Callable[..., Awaitable[Harness]],
    tmp_path: Any,
    *,
    name: str,
    bot_class: str,
    org: list[dict[str, Any]],
) -> tuple[Harness, BotRuntime, OASystem, BusinessClient]:
    """Server with ``org`` loaded, the business system's stub, one bot registered as an app."""
    cards = {**CARD_SETTINGS, "reminder_offsets_s": (1,)}
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=cards)
    await load_org(server, org)
    app_secret, event_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    system = OASystem(event_secret)
    await system.start()
    bot = BotConfig(name=name, bot_class=bot_class, app_id=name, app_secret=app_secret,
                    event_secret=event_secret, forward_url=system.forward_url,
                    max_event_bytes=16 * 1024)  # fmt: skip
    runtime = BotRuntime(runtime_config(tmp_path / "bots.sqlite3", server.world.http_url, bot))
    await runtime.start()
    await register_app(server.world.http_url, name, app_secret, runtime.url(name, "callback"))
    return server, runtime, system, BusinessClient(server.world.http_url, name, app_secret)


@pytest.fixture
async def world(
    start_server: Callable[..., Awaitable[Harness]], tmp_path: Any
) -> AsyncIterator[HotlineWorld]:
    server, runtime, platform, app = await bot_world(
        start_server, tmp_path, name="hotline", bot_class="bots.hotline:HotlineBot", org=ORG
    )
    yield HotlineWorld(server, runtime, platform, app)
    await app.close()
    await runtime.stop()
    await platform.stop()


def unit(uid: str, name: str, handlers: list[str], leader: str) -> dict[str, Any]:
    return {"id": uid, "name": name, "handlers": handlers, "leader": leader}


def case_event(event_id: str, due_in_s: float = 3600.0, **extra: Any) -> dict[str, Any]:
    """A realistic 12345 case for 新建区, transferable to 青山湖区."""
    data: dict[str, Any] = {
        "case_id": f"GD-{event_id}",
        "title": "小区夜间施工噪音扰民",
        "category": "环境保护",
        "citizen": "王女士",
        "phone": PHONE,
        "address": "新建区长征镇幸福小区",
        "content": "**诉求**：幸福小区旁工地连续一周夜间施工至凌晨，请尽快处理。",
        "due_at": int((time.time() + due_in_s) * 1000),
        "unit": unit("xh", "新建区", ["h1", "h2"], "boss"),
        "transfer_units": [unit("qs", "青山湖区", ["q1"], "qboss")],
    }
    data.update(extra)
    return {"event_id": event_id, "type": "hotline.case", "data": data}


def phone_of(view: dict[str, Any]) -> str:
    value: str = next(f["value"] for f in view["fields"] if f["label"] == "联系电话")
    return value


def decisions(platform: OASystem) -> list[tuple[str, str]]:
    return sorted((d["type"], d["actor"]) for d in platform.decisions.values())


async def test_claim_then_close_reaches_the_platform_once_and_every_holder_sees_it(
    world: HotlineWorld,
) -> None:
    await admin(world.server, "/admin/v1/scopes", {"user": "h2", "scope": "pii:read"})
    h1, h2, h3 = [await world.server.client(u) for u in ("h1", "h2", "h3")]
    status, answer = await world.platform.send_event(world.events_url, case_event("c1"))
    assert status == 201 and answer["state"] == "delivered", answer
    views = {u: await card_message(c, track_id("c1")) for u, c in (("h1", h1), ("h2", h2),
                                                                    ("h3", h3))}  # fmt: skip
    for view in views.values():  # the unit and its sub-unit hold it; the handlers act
        assert view["title"] == "12345工单：小区夜间施工噪音扰民"
        assert [a["label"] for a in view["actions"]] == ["签收", "转办", "退回"]
        assert view["actionable_by"] == ["h1", "h2"] and view["status"]["text"] == "待签收"
    assert phone_of(views["h1"]) == "138****1234" and phone_of(views["h3"]) == "138****1234"
    assert phone_of(views["h2"]) == PHONE  # h2 holds pii:read
    card_id = views["h1"]["card_id"]

    await act(h1, card_id, "claim")
    await until(lambda: len(world.platform.decisions) == 1, what="the claim at the platform")
    for c in (h1, h2, h3):
        claimed = await card_reaching(c, card_id, lambda v: v["status"]["text"] == "已签收（h1）")
        assert claimed["state"] == "approved" and claimed["actionable_by"] == []
    handling = await held_card(h1, "h1", card_track_id("c1", "handle:" + first_key(world)))
    assert [a["label"] for a in handling["actions"]] == ["办结", "转办", "退回"]
    assert handling["actionable_by"] == ["h1"] and handling["due_at"] == views["h1"]["due_at"]

    await act(h1, handling["card_id"], "close", reply="已协调工地停止夜间施工。")
    await until(lambda: len(world.platform.decisions) == 2, what="the close at the platform")
    for c in (h1, h2, h3):  # the dispatch card, held by the whole unit, shows the outcome
        done = await card_reaching(c, card_id, lambda v: v["status"]["text"] == "已办结（h1）")
        assert done["status"]["color"] == "green"
    closed = await card_now(
        h1, handling["card_id"], lambda v: v["status"]["text"] == "已办结（h1）"
    )
    assert closed["state"] == "approved" and closed["actionable_by"] == []
    await asyncio.sleep(0.3)
    assert decisions(world.platform) == [("hotline.claimed", "h1"), ("hotline.closed", "h1")]
    assert len(world.platform.deliveries) == 2  # each decision exactly once
    (close,) = [d for d in world.platform.decisions.values() if d["type"] == "hotline.closed"]
    assert (close["case_id"], close["unit"], close["reply"]) == (
        "GD-c1", "xh", "已协调工地停止夜间施工。"
    )  # fmt: skip


async def held_card(c: Client, user: str, track: str, timeout: float = 5.0) -> dict[str, Any]:
    """The card message for ``track`` in the user's notice conversation with the bot.

    Read from what the client holds, not its event queue: a wait for another
    event may already have consumed (and discarded) the message event.
    """
    for _ in range(int(timeout / 0.05)):
        for m in c.messages(f"n:hotline:{user}"):
            if m.get("kind") == "card" and m["body"]["card"]["out_track_id"] == track:
                view: dict[str, Any] = m["body"]["card"]
                return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user} never received card {track}")


async def card_now(
    c: Client, card_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The card as ``card.get`` answers once ``pred`` holds (its events may have been read)."""
    view: dict[str, Any] = {}
    for _ in range(int(timeout / 0.05)):
        view = await c.request("card.get", card_id=card_id)
        if pred(view):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"card {card_id} never reached the expected state: {view}")


def first_key(world: HotlineWorld) -> str:
    """The action id of the first forward (the claim): the handling card's key derives from it."""
    return next(iter(world.platform.decisions))


async def test_transfer_and_return_reach_the_platform_and_the_other_unit(
    world: HotlineWorld,
) -> None:
    h2, q1 = await world.server.client("h2"), await world.server.client("q1")
    assert (await world.platform.send_event(world.events_url, case_event("c2")))[0] == 201
    view = await card_message(h2, track_id("c2"))
    await act(h2, view["card_id"], "transfer", target="qs", reason="属青山湖区管辖")
    await until(lambda: len(world.platform.decisions) == 1, what="the transfer")
    (transfer,) = world.platform.decisions.values()
    assert (transfer["type"], transfer["unit"], transfer["to_unit"]) == (
        "hotline.transferred", "xh", "qs"
    )  # fmt: skip
    moved = await card_reaching(h2, view["card_id"], lambda v: v["status"]["color"] == "gray")
    assert moved["status"]["text"] == "已转办至青山湖区" and moved["state"] == "rejected"
    track = card_track_id("c2", "dispatch:" + transfer["action_id"])
    there = await held_card(q1, "q1", track)
    assert there["actionable_by"] == ["q1"] and [a["label"] for a in there["actions"]] == [
        "签收", "转办", "退回"
    ]  # fmt: skip
    assert {"label": "承办单位", "value": "青山湖区", "sensitive": False} in there["fields"]
    await act(q1, there["card_id"], "return", reason="非本单位职责")
    await until(lambda: len(world.platform.decisions) == 2, what="the return")
    returned = next(d for d in world.platform.decisions.values() if d["type"] == "hotline.returned")
    assert (returned["unit"], returned["reason"], returned["actor"]) == ("qs", "非本单位职责", "q1")
    back = await card_reaching(q1, there["card_id"], lambda v: v["status"]["color"] == "red")
    assert back["status"]["text"] == "已退回（q1）" and back["state"] == "rejected"


async def test_statutory_deadline_reminds_then_escalates_to_the_unit_leader(
    world: HotlineWorld,
) -> None:
    h1, boss = await world.server.client("h1"), await world.server.client("boss")
    status, _ = await world.platform.send_event(world.events_url, case_event("c3", due_in_s=2.0))
    assert status == 201
    view = await card_message(h1, track_id("c3"))
    remind = await h1.next_event(
        "message", predicate=lambda e: e.data["kind"] == "notice", timeout=5
    )
    assert remind.data["body"]["title"].startswith("待办提醒")
    overdue = await card_reaching(h1, view["card_id"], lambda v: v["overdue"], timeout=6)
    assert overdue["state"] == "open"
    escalated = await card_message(boss, track_id("c3"), timeout=6)
    assert escalated["card_id"] == view["card_id"] and "boss" not in escalated["actionable_by"]
    notice = await boss.next_event(
        "message", predicate=lambda e: e.data["kind"] == "notice", timeout=5
    )
    assert notice.data["body"]["title"].startswith("督办")
    assert world.platform.decisions == {}  # nobody acted: nothing was forwarded


BAD_CASES: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("no-phone", {"phone": None}, 400, "missing_field", "data.phone"),
    ("no-deadline", {"due_at": None}, 400, "missing_field", "data.due_at"),
    ("no-handlers", {"unit": {"id": "xh", "name": "新建区", "leader": "boss"}}, 400,
     "missing_field", "data.unit.handlers"),
    ("bad-handler", {"unit": unit("xh", "新建区", ["h1", "a b"], "boss")}, 400,
     "invalid_field", "data.unit.handlers[1]"),
    ("unknown-unit", {"unit": unit("nowhere", "无此单位", ["h1"], "boss")}, 422,
     "unknown_unit", None),
    ("unknown-user", {"unit": unit("xh", "新建区", ["h1", "ghost"], "boss")}, 422,
     "unknown_user", None),
]  # fmt: skip


@pytest.mark.parametrize(("eid", "change", "status", "code", "field"), BAD_CASES)
async def test_a_bad_case_gets_a_clear_4xx_and_nothing_is_pushed(
    world: HotlineWorld, eid: str, change: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    event = case_event(eid)
    event["data"].update(change)
    event["data"] = {k: v for k, v in event["data"].items() if v is not None}
    await assert_refused_and_nothing_pushed(
        system=world.platform,
        events_url=world.events_url,
        event=event,
        expect=(status, code, field),
        app=world.app,
        runtime=world.runtime,
        bot="hotline",
        holder=await world.server.client("h1"),
        conv="n:hotline:h1",
    )


async def test_an_oversize_case_is_refused_413(world: HotlineWorld) -> None:
    event = case_event("c-big", content="长" * 6000)  # ~18 KiB, over the 16 KiB limit
    status, answer = await world.platform.send_event(world.events_url, event)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert world.runtime.store.counts("hotline") == {}
