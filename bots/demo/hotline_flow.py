"""The 12345 hotline flow: cases dispatched to units, claimed, transferred, returned, closed.

The simulated platform (``hotline_platform.py``) dispatches each case to a
township or village with its handlers and leader. The scenario's cases:
a case claimed (签收) and closed (办结) with a reply; a case transferred
(转办) to another township, claimed and closed there; a case returned
(退回) with a reason; and a case left alone past a 3 s deadline, so the
server marks it overdue and escalates it to the unit's leader (督办) -
then it is claimed and closed. Every handler must see each outcome on the
dispatch card, and the platform must receive each step exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

from bots.demo.driving import (
    Clients,
    act,
    card_message,
    card_message_where,
    card_reaching,
    field_value,
    notice_message,
    until,
)
from bots.demo.flows import Flow, FlowContext, FlowResult
from bots.demo.hotline_platform import HotlinePlatform, case_event
from bots.demo.org import Org
from bots.demo.world import DemoWorld

OVERDUE_IN_S = 3.0
REPLY = "已联系属地现场核实处置，问题已解决，来电人表示满意。"


@dataclass(frozen=True)
class Case:
    event: dict[str, Any]
    outcome: str  # close / transfer / return / overdue


def plan(org: Org, quick: bool) -> list[Case]:
    rng, n = random.Random(12345), count(1)
    towns = org.at_level("township")
    used = towns[:1] if quick else towns
    cases: list[Case] = []
    for i, t in enumerate(used):
        nxt = towns[(i + 1) % len(towns)].id
        cases.append(Case(case_event(org, t.id, f"case-{next(n):04d}", rng), "close"))
        ev = case_event(org, t.id, f"case-{next(n):04d}", rng, transfer_to=(nxt,))
        cases.append(Case(ev, "transfer"))
        cases.append(Case(case_event(org, t.id, f"case-{next(n):04d}", rng), "return"))
    for t in used[:1] if quick else used[:2]:
        ev = case_event(org, f"{t.id}.v1", f"case-{next(n):04d}", rng, due_in_s=OVERDUE_IN_S)
        cases.append(Case(ev, "overdue"))
    return cases


async def scenario(world: DemoWorld, ctx: FlowContext, quick: bool) -> FlowResult:
    """Run every case of :func:`plan`; count each step and what went wrong."""
    assert isinstance(ctx.system, HotlinePlatform)
    platform, res, clients = ctx.system, FlowResult(), Clients(world.client)
    expected = 0
    try:
        for case in plan(world.org, quick):
            try:
                expected += await _run_case(world, platform, clients, case, res)
            except TimeoutError:
                res.problems.append(f"{case.event['event_id']} ({case.outcome}): timed out")
    finally:
        await clients.close()
    if not await until(lambda: len(platform.decisions) >= expected):
        res.problems.append(f"the platform received {len(platform.decisions)} of {expected}")
    res.counters["forwarded"] = len(platform.decisions)
    res.counters["forward_repeats"] = len(platform.deliveries) - len(platform.decisions)
    return res


async def _run_case(
    world: DemoWorld, platform: HotlinePlatform, clients: Clients, case: Case, res: FlowResult
) -> int:
    """One case; returns how many forwards it must cause."""
    eid, data = case.event["event_id"], case.event["data"]
    handlers, leader = data["unit"]["handlers"], data["unit"]["leader"]
    targets = [u for t in data["transfer_units"] for u in t["handlers"]]
    for u in (*handlers, leader, *targets):  # connected before anything reaches them
        await clients.get(u)
    status, answer = await platform.send_event(world.events_url("hotline"), case.event)
    if status != 201:
        res.problems.append(f"{eid}: the bot answered {status} {answer}")
        return 0
    res.add("dispatched")
    views = [await card_message(await clients.get(u), "ev-" + eid) for u in handlers]
    res.add("cards_held", len(views))
    res.add("phone_masked", sum("*" in str(field_value(v, "联系电话")) for v in views))
    card_id, first = views[0]["card_id"], await clients.get(handlers[0])
    if case.outcome == "return":
        await act(first, card_id, "return", reason="该诉求已进入司法程序，不属于本单位职能范围")
        res.add("returned")
        await _all_see(clients, handlers, card_id, "已退回", res)
        return 1
    if case.outcome == "transfer":
        target = data["transfer_units"][0]
        await act(first, card_id, "transfer", target=target["id"], reason="经核实属邻镇辖区")
        res.add("transferred")
        await _all_see(clients, handlers, card_id, "已转办", res)
        there = await clients.get(target["handlers"][0])
        moved = await card_message_where(there, _dispatch_of(data["case_id"], target["name"]))
        await _claim_and_close(clients, target["handlers"], moved["card_id"], data, res)
        return 3
    if case.outcome == "overdue":
        await notice_message(await clients.get(leader), "督办：")
        res.add("escalated")
        await card_reaching(first, card_id, lambda v: v.get("overdue") is True)
        res.add("overdue")
    await _claim_and_close(clients, handlers, card_id, data, res)
    return 2


async def _claim_and_close(
    clients: Clients, handlers: list[str], card_id: str, data: dict[str, Any], res: FlowResult
) -> None:
    """签收 by the first handler, 办结 on their handling card; every handler sees 已办结."""
    claimer = await clients.get(handlers[0])
    await act(claimer, card_id, "claim")
    res.add("claimed")
    handling = await card_message_where(
        claimer,
        lambda v: (
            v["title"].startswith("12345工单办理") and field_value(v, "工单编号") == data["case_id"]
        ),
    )
    await act(claimer, handling["card_id"], "close", reply=REPLY)
    res.add("closed")
    await _all_see(clients, handlers, card_id, "已办结", res)


async def _all_see(
    clients: Clients, users: list[str], card_id: str, status: str, res: FlowResult
) -> None:
    for u in users:
        view = await card_reaching(
            await clients.get(u), card_id, lambda v: v["status"]["text"].startswith(status)
        )
        if view["status"]["text"].startswith(status):
            res.add("holders_saw_outcome")


def _dispatch_of(case_id: str, unit_name: str) -> Any:
    return lambda v: (
        v["title"].startswith("12345工单：")
        and field_value(v, "工单编号") == case_id
        and field_value(v, "承办单位") == unit_name
    )


def live_events(org: Org, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Endless realistic cases for ``run``: every third to the first township."""
    stamp, towns = rng.randrange(10**6), org.at_level("township")
    for n in count(1):
        town = towns[0] if n % 3 == 1 else rng.choice(towns)
        unit = town.id if rng.random() < 0.5 else f"{town.id}.v{rng.randrange(1, 4)}"
        other = rng.choice([t.id for t in towns if t.id != town.id])
        yield case_event(org, unit, f"live-{stamp:06d}-{n:05d}", rng, transfer_to=(other,))


FLOW = Flow(
    name="hotline",
    title="12345 热线工单",
    bot_class="bots.hotline:HotlineBot",
    make_system=lambda secret, org: HotlinePlatform(secret),
    scenario=scenario,
    live_events=live_events,
)
