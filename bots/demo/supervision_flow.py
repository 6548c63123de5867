"""The 督查督办 flow: a task split down the levels, progress reported, overdue units DINGed.

The simulated 督办 system (``supervision_system.py``) issues, from the
province's 督查室, a task to a city and every level below it (counties,
townships, villages). In the scenario each unit's first handler reports
progress (报送进展) on their sub-task card, then 办结 on the fresh card the
bot sends for the next report; the issuer's aggregate card must end at
全部办结. A second task, to a township and its village, is left alone past
a 3 s deadline: the bot DINGs both units' handlers and marks them 已逾期
on the aggregate, the server escalates each sub-task card to the unit's
leader (督办); then both report 办结.
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
    all_seen,
    card_message,
    card_message_where,
    card_reaching,
    field_value,
    is_notice,
    is_overdue,
    notice_message,
    until,
)
from bots.demo.flows import Flow, FlowContext, FlowResult
from bots.demo.org import Org
from bots.demo.supervision_system import (
    DONE,
    PROGRESS,
    SupervisionSystem,
    down_the_levels,
    task_event,
)
from bots.demo.world import DemoWorld

OVERDUE_IN_S = 3.0


@dataclass(frozen=True)
class Task:
    event: dict[str, Any]
    overdue: bool  # left alone until its deadline passes


def plan(org: Org, quick: bool) -> list[Task]:
    rng, n = random.Random(2026), count(1)
    cities = org.at_level("city")[: 1 if quick else None]
    tasks = [
        Task(
            task_event(
                org, down_the_levels(org, c.id, 1 if quick else 2), f"task-{next(n):04d}", rng
            ),
            False,
        )
        for c in cities
    ]
    late = org.at_level("township")[-1].id
    ev = task_event(org, [late, f"{late}.v1"], f"task-{next(n):04d}", rng, due_in_s=OVERDUE_IN_S)
    return [*tasks, Task(ev, True)]


async def scenario(world: DemoWorld, ctx: FlowContext, quick: bool) -> FlowResult:
    """Run every task of :func:`plan`; count each report and what went wrong."""
    assert isinstance(ctx.system, SupervisionSystem)
    system, res, clients = ctx.system, FlowResult(), Clients(world.client)
    expected = 0
    try:
        for task in plan(world.org, quick):
            try:
                expected += await _run_task(world, system, clients, task, res)
            except TimeoutError:
                res.problems.append(f"{task.event['event_id']}: timed out")
    finally:
        await clients.close()
    if not await until(lambda: len(system.decisions) >= expected):
        res.problems.append(f"the 督办 system received {len(system.decisions)} of {expected}")
    res.counters["forwarded"] = len(system.decisions)
    res.counters["forward_repeats"] = len(system.deliveries) - len(system.decisions)
    return res


async def _run_task(
    world: DemoWorld, system: SupervisionSystem, clients: Clients, task: Task, res: FlowResult
) -> int:
    """One task; returns how many forwards it must cause."""
    eid, data = task.event["event_id"], task.event["data"]
    units = data["units"]
    issuer = await clients.get(data["issuer"])
    for u in units:
        for user in (u["handlers"][0], u["leader"]):
            await clients.get(user)
    status, answer = await system.send_event(world.events_url("supervision"), task.event)
    if status != 201:
        res.problems.append(f"{eid}: the bot answered {status} {answer}")
        return 0
    res.add("tasks")
    aggregate = await card_message(issuer, "ev-" + eid)
    cards: dict[str, dict[str, Any]] = {}
    for u in units:
        handler = await clients.get(u["handlers"][0])
        cards[u["id"]] = await card_message_where(handler, _sub_task(data["task_id"], u, 1))
        res.add("sub_tasks")
    if task.overdue:
        for u in units:
            handler = await clients.get(u["handlers"][0])
            ding, overdue = is_notice("督办催办："), is_overdue(cards[u["id"]]["card_id"])
            await all_seen(handler, {"ding": ding, "overdue": overdue})
            res.add("dinged")
            res.add("units_overdue")
            await notice_message(await clients.get(u["leader"]), "督办：")
            res.add("units_escalated")
        await card_reaching(issuer, aggregate["card_id"], lambda v: "已逾期" in v["status"]["text"])
    for u in units:
        handler = await clients.get(u["handlers"][0])
        card_id = cards[u["id"]]["card_id"]
        if not task.overdue:
            await act(handler, card_id, "progress", progress=PROGRESS[0])
            res.add("progress_reports")
            card_id = (await card_message_where(handler, _sub_task(data["task_id"], u, 2)))[
                "card_id"
            ]
        await act(handler, card_id, "done", progress=DONE)
        res.add("units_done")
    done = f"全部办结 {len(units)}/{len(units)}"
    await card_reaching(issuer, aggregate["card_id"], lambda v: v["status"]["text"] == done)
    res.add("aggregates_all_done")
    return len(units) if task.overdue else 2 * len(units)


def _sub_task(task_id: str, unit: dict[str, Any], round_no: int) -> Any:
    """A unit's sub-task card for its ``round_no``-th report."""
    return lambda v: (
        v["title"].startswith("督办任务：")
        and field_value(v, "任务编号") == task_id
        and str(field_value(v, "承办单位")).startswith(unit["name"])
        and field_value(v, "报送次数") == f"第{round_no}次"
    )


def live_events(org: Org, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Endless realistic tasks for ``run`` (a week to do them)."""
    stamp, cities = rng.randrange(10**6), org.at_level("city")
    for n in count(1):
        city = cities[0] if n % 3 == 1 else rng.choice(cities)
        yield task_event(org, down_the_levels(org, city.id, 1), f"live-{stamp:06d}-{n:05d}", rng)


FLOW = Flow(
    name="supervision",
    title="督查督办",
    bot_class="bots.supervision:SupervisionBot",
    make_system=lambda secret, org: SupervisionSystem(secret),
    scenario=scenario,
    live_events=live_events,
)
