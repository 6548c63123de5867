"""The 督查督办 bot end to end: a task split over five levels, progress, the live aggregate, DING.

Real server with a five-level org, the bot runtime in-process, the 督办 system
played by the signed stub of ``bots/demo/oa_system.py``, users on WebSockets.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bots.demo.oa_system import OASystem
from bots.runtime.model import card_track_id, track_id
from bots.runtime.runner import BotRuntime
from imserver_sdk import BusinessClient, BusinessError, Client
from tests.bots_support import assert_refused_and_nothing_pushed
from tests.cards_support import ADMIN_KEY
from tests.integration.test_bots_hotline import bot_world, card_now, load_org
from tests.integration.test_bots_oa import act, register_app, until
from tests.integration.test_bots_restart import PATIENT_CARDS, BotProcess
from tests.processes import free_port
from tests.support import Harness

LEVELS = [
    ("jx", "江西省", "province", None),
    ("nc", "南昌市", "city", "jx"),
    ("xh", "新建区", "county", "nc"),
    ("cz", "长征镇", "township", "xh"),
    ("xf", "幸福村", "village", "cz"),
]
ORG: list[dict[str, Any]] = [
    {"op": "unit", "id": uid, "name": name, "level": level, **({"parent": p} if p else {})}
    for uid, name, level, p in LEVELS
]
ORG += [{"op": "member", "user": f"{uid}-h", "name": f"{name}办事员", "units": [{"unit": uid}]}
        for uid, name, _, _ in LEVELS]  # fmt: skip
ORG += [
    {"op": "member", "user": f"{uid}-boss", "name": f"{name}负责人",
     "units": [{"unit": uid, "leader": True}]}
    for uid, name, _, _ in LEVELS
]  # fmt: skip
ORG.append({"op": "member", "user": "duban", "name": "督查室", "units": [{"unit": "jx"}]})


@dataclass
class SupervisionWorld:
    server: Harness
    runtime: BotRuntime
    system: OASystem  # the 督办 system's side
    app: BusinessClient

    @property
    def events_url(self) -> str:
        return self.runtime.url("duban", "events")


@pytest.fixture
async def world(
    start_server: Callable[..., Awaitable[Harness]], tmp_path: Any
) -> AsyncIterator[SupervisionWorld]:
    server, runtime, system, app = await bot_world(
        start_server, tmp_path, name="duban", bot_class="bots.supervision:SupervisionBot", org=ORG
    )
    yield SupervisionWorld(server, runtime, system, app)
    await app.close()
    await runtime.stop()
    await system.stop()


def task_event(event_id: str, due_in_s: float = 3600.0, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": f"DB-{event_id}",
        "title": "秋冬季森林防火隐患排查",
        "content": "请各级于时限内完成辖区森林防火隐患排查，并逐级报送进展。",
        "issuer": "duban",
        "issuer_unit": "省政府督查室",
        "due_at": int((time.time() + due_in_s) * 1000),
        "units": [
            {
                "id": uid,
                "name": name,
                "level": level,
                "handlers": [f"{uid}-h"],
                "leader": f"{uid}-boss",
                **({"parent": p} if p else {}),
            }
            for uid, name, level, p in LEVELS
        ],
    }
    data.update(extra)
    return {"event_id": event_id, "type": "supervision.task", "data": data}


def sub_task(event_id: str, unit: str, key: str = "1") -> str:
    return card_track_id(event_id, f"unit:{unit}:{key}")


async def held(c: Client, user: str, track: str, timeout: float = 5.0) -> dict[str, Any]:
    for _ in range(int(timeout / 0.05)):
        for m in c.messages(f"n:duban:{user}"):
            if m.get("kind") == "card" and m["body"]["card"]["out_track_id"] == track:
                view: dict[str, Any] = m["body"]["card"]
                return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user} never received card {track}")


def line(view: dict[str, Any], unit_name: str) -> str:
    value: str = next(f["value"] for f in view["fields"] if f["label"].strip("　") == unit_name)
    return value


async def test_each_level_reports_and_the_issuers_card_aggregates_live(
    world: SupervisionWorld,
) -> None:
    duban = await world.server.client("duban")
    units = {uid: await world.server.client(f"{uid}-h") for uid, *_ in LEVELS}
    status, answer = await world.system.send_event(world.events_url, task_event("t1"))
    assert status == 201 and answer["out_track_id"] == track_id("t1"), answer
    overview = await held(duban, "duban", track_id("t1"))
    assert overview["title"] == "督办总览：秋冬季森林防火隐患排查" and overview["policy"] is None
    assert [f["label"] for f in overview["fields"]] == [
        "江西省", "　南昌市", "　　新建区", "　　　长征镇", "　　　　幸福村"
    ]  # fmt: skip
    assert {f["value"] for f in overview["fields"]} == {"未报送"}
    assert overview["status"]["text"] == "督办中 办结0/5"
    for uid, c in units.items():  # each unit holds its own sub-task, not the others'
        view = await held(c, f"{uid}-h", sub_task("t1", uid))
        assert view["actionable_by"] == [f"{uid}-h"]
        assert [a["label"] for a in view["actions"]] == ["报送进展", "办结"]
        held_tracks = {m["body"]["card"]["out_track_id"] for m in c.messages(f"n:duban:{uid}-h")}
        assert held_tracks == {sub_task("t1", uid)}

    nc = units["nc"]
    first = await held(nc, "nc-h", sub_task("t1", "nc"))
    await act(nc, first["card_id"], "progress", progress="已完成80%林区排查")
    await until(lambda: len(world.system.decisions) == 1, what="the progress report")
    (report,) = world.system.decisions.values()
    assert (report["type"], report["unit"], report["progress"], report["report"]) == (
        "supervision.progress", "nc", "已完成80%林区排查", 1
    )  # fmt: skip
    live = await card_now(duban, overview["card_id"], lambda v: "进展" in line(v, "南昌市"))
    assert line(live, "南昌市") == "进展（第1次）：已完成80%林区排查"
    reported = await card_now(nc, first["card_id"], lambda v: v["status"]["color"] == "blue")
    assert reported["status"]["text"] == "已报送第1次进展"
    second = await held(nc, "nc-h", sub_task("t1", "nc", report["action_id"]))
    assert {"label": "报送次数", "value": "第2次", "sensitive": False} in second["fields"]
    assert "已完成80%林区排查" in second["body_md"]

    await act(nc, second["card_id"], "done", progress="全部排查完毕，整改3处")
    for uid, c in units.items():
        if uid != "nc":
            view = await held(c, f"{uid}-h", sub_task("t1", uid))
            await act(c, view["card_id"], "done", progress=f"{uid}排查完毕")
    await until(lambda: len(world.system.decisions) == 6, what="every unit's report")
    final = await card_now(duban, overview["card_id"], lambda v: v["status"]["color"] == "green")
    assert final["status"]["text"] == "全部办结 5/5"
    assert line(final, "南昌市") == "已办结（第2次）：全部排查完毕，整改3处"
    await asyncio.sleep(0.3)
    assert len(world.system.deliveries) == 6  # each report exactly once
    kinds = sorted(d["type"] for d in world.system.decisions.values())
    assert kinds == ["supervision.done"] * 5 + ["supervision.progress"]


async def test_overdue_units_are_dinged_and_marked_and_their_leaders_escalated(
    world: SupervisionWorld,
) -> None:
    duban, xh, cz = [await world.server.client(u) for u in ("duban", "xh-h", "cz-h")]
    cz_boss = await world.server.client("cz-boss")
    status, _ = await world.system.send_event(world.events_url, task_event("t2", due_in_s=2.0))
    assert status == 201
    done = await held(xh, "xh-h", sub_task("t2", "xh"))
    await act(xh, done["card_id"], "done", progress="已完成")
    ding = await cz.next_event(
        "message",
        predicate=lambda e: e.data["kind"] == "notice" and e.data["body"].get("urgent") is True,
        timeout=8,
    )
    assert ding.data["body"]["title"] == "督办催办：秋冬季森林防火隐患排查"
    assert "长征镇" in ding.data["body"]["text"] and time.time() * 1000 >= task_due(world, "t2")
    overview = await held(duban, "duban", track_id("t2"))
    late = await card_now(duban, overview["card_id"], lambda v: v["status"]["color"] == "red")
    assert late["status"]["text"] == "已逾期 办结1/5"
    assert line(late, "长征镇") == "【已逾期】未报送"
    assert line(late, "新建区") == "已办结（第1次）：已完成"
    escalated = await held(cz_boss, "cz-boss", sub_task("t2", "cz"), timeout=5)
    now = await card_now(cz_boss, escalated["card_id"], lambda v: v["overdue"])
    assert now["state"] == "open" and now["actionable_by"] == ["cz-h"]  # the leader sees it
    await asyncio.sleep(0.3)
    dings = [m for m in xh.messages("n:duban:xh-h") if m.get("kind") == "notice"]
    assert [m for m in dings if m["body"].get("urgent")] == []  # a unit that finished: no DING


def task_due(world: SupervisionWorld, event_id: str) -> int:
    event = world.runtime.store.event("duban", event_id)
    assert event is not None
    due: int = event.data["due_at"]
    return due


BAD_TASKS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("no-units", {"units": []}, 400, "missing_field", "data.units"),
    ("no-issuer", {"issuer": None}, 400, "missing_field", "data.issuer"),
    ("bad-level", {"units": [{"id": "jx", "name": "江西省", "level": "galaxy",
                              "handlers": ["jx-h"], "leader": "jx-boss"}]},
     400, "invalid_field", "data.units[0].level"),
    ("upside-down", {"units": [
        {"id": "xh", "name": "新建区", "level": "county", "handlers": ["xh-h"], "leader": "b"},
        {"id": "nc", "name": "南昌市", "level": "city", "parent": "xh", "handlers": ["nc-h"],
         "leader": "b"}]}, 400, "invalid_field", "data.units[1].level"),
    ("unknown-unit", {"units": [{"id": "mars", "name": "火星", "level": "city",
                                 "handlers": ["nc-h"], "leader": "nc-boss"}]},
     422, "unknown_unit", None),
]  # fmt: skip


@pytest.mark.parametrize(("eid", "change", "status", "code", "field"), BAD_TASKS)
async def test_a_bad_task_gets_a_clear_4xx_and_nothing_is_pushed(
    world: SupervisionWorld,
    eid: str,
    change: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    event = task_event(eid)
    event["data"].update(change)
    event["data"] = {k: v for k, v in event["data"].items() if v is not None}
    await assert_refused_and_nothing_pushed(
        system=world.system,
        events_url=world.events_url,
        event=event,
        expect=(status, code, field),
        app=world.app,
        runtime=world.runtime,
        bot="duban",
        holder=await world.server.client("nc-h"),
        conv="n:duban:nc-h",
    )


async def test_a_unit_refused_midway_withdraws_the_cards_already_pushed(
    world: SupervisionWorld,
) -> None:
    jx = await world.server.client("jx-h")
    event = task_event("t-mid")
    mars = {"id": "mars", "name": "火星", "level": "city", "parent": "jx",
            "handlers": ["nc-h"], "leader": "b"}  # fmt: skip
    event["data"]["units"].insert(1, mars)
    status, answer = await world.system.send_event(world.events_url, event)
    assert (status, answer["error"]["code"]) == (422, "unknown_unit"), answer
    first = await held(jx, "jx-h", sub_task("t-mid", "jx"))
    closed = await card_now(jx, first["card_id"], lambda v: v["state"] == "closed")
    assert closed["status"]["text"] == "已撤回（下发失败）" and closed["actionable_by"] == []
    counts = world.runtime.store.counts("duban")
    assert "card.pending" not in counts and counts.get("card.failed", 0) >= 1
    again = await world.system.send_event(world.events_url, event)  # kept: a repeat, not new
    assert again[0] == 200 and again[1]["duplicate"] is True and again[1]["state"] == "failed"
    with pytest.raises(BusinessError):
        await world.app.get_card(track_id("t-mid"))  # the issuer never got the overview


class DubanProcess(BotProcess):
    """``python -m bots run`` with the supervision bot, as a ``kill -9``-able child."""

    def __init__(self, tmp: Path, server_url: str, forward_url: str) -> None:
        self.port = free_port()
        self.app_secret, self.event_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.config = tmp / "bots.toml"
        self.config.write_text(
            f'[runtime]\nserver_url = "{server_url}"\nport = {self.port}\n'
            f'store = "{tmp / "bots.sqlite3"}"\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.3\n'
            f'[[bot]]\nname = "duban"\nclass = "bots.supervision:SupervisionBot"\n'
            f'app_id = "duban"\napp_secret = "{self.app_secret}"\n'
            f'event_secret = "{self.event_secret}"\nforward_url = "{forward_url}"\n'
        )
        self.proc = None

    def url(self, what: str) -> str:
        return f"http://127.0.0.1:{self.port}/bots/duban/{what}"


@pytest.mark.slow
async def test_kill9_keeps_the_aggregate_state_and_the_deadline_timer(
    start_server: Callable[..., Awaitable[Harness]], tmp_path: Path
) -> None:
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=PATIENT_CARDS)
    await load_org(server, ORG)
    system = OASystem("")
    await system.start()
    bot = DubanProcess(tmp_path, server.world.http_url, system.forward_url)
    system.event_secret = bot.event_secret
    await register_app(server.world.http_url, "duban", bot.app_secret, bot.url("callback"))
    duban, nc, cz = [await server.client(u) for u in ("duban", "nc-h", "cz-h")]
    try:
        await bot.start()
        event = task_event("t-k9", due_in_s=4.0)
        assert (await system.send_event(bot.url("events"), event))[0] == 201
        first = await held(nc, "nc-h", sub_task("t-k9", "nc"))
        bot.kill9()  # the report's callback waits for the bot
        await act(nc, first["card_id"], "progress", progress="已排查一半")
        await asyncio.sleep(0.5)
        await bot.start()
        await until(lambda: len(system.decisions) == 1, timeout=10, what="the report")
        overview = await held(duban, "duban", track_id("t-k9"))
        live = await card_now(duban, overview["card_id"], lambda v: "进展" in line(v, "南昌市"))
        assert line(live, "南昌市") == "进展（第1次）：已排查一半"
        bot.kill9()  # down across the deadline: the timer fires after the restart
        await asyncio.sleep(max(0.0, task_due_s(event) - time.time()) + 0.5)
        await bot.start()
        late = await card_now(
            duban, overview["card_id"], lambda v: v["status"]["color"] == "red", timeout=10
        )
        assert line(late, "南昌市") == "【已逾期】进展（第1次）：已排查一半"  # state survived
        await asyncio.sleep(1.0)
        dings = [m for m in cz.messages("n:duban:cz-h")
                 if m.get("kind") == "notice" and m["body"].get("urgent")]  # fmt: skip
        assert len(dings) == 1  # the timer fired once
        assert len(system.deliveries) == 1  # the report was forwarded exactly once
    finally:
        bot.stop()
        await system.stop()


def task_due_s(event: dict[str, Any]) -> float:
    due: int = event["data"]["due_at"]
    return due / 1000
