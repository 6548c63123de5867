"""The 统建 OA flow: leave, document and expense requests decided over WebSockets.

The simulated OA system (``oa_system.py``) picks approvers the way a real OA
does, from its own copy of the org chart: a village clerk's leave goes up
the chain (village head, then township head); a county document is
countersigned (会签) by the county's leaders and its office head; a
township expense is decided by any one of its leaders (或签). The scenario
sends each request, has the approvers click 同意 / 驳回 in their own
clients, and checks that every holder (approvers and the applicant, on cc)
sees the final state and that OA received each decision exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

from bots.demo.driving import Clients, act, card_message, card_reaching, until
from bots.demo.flows import Flow, FlowContext, FlowResult
from bots.demo.oa_system import OASystem
from bots.demo.org import Org, Person
from bots.demo.world import DemoWorld

REASONS = ["家中老人住院", "子女升学", "身体不适需复查", "回乡处理宅基地事宜"]
DOCUMENTS = ["关于做好秋冬季森林防火工作的通知", "关于开展安全生产大检查的实施方案"]
EXPENSES = [("防汛物资采购", "12800"), ("村道维修材料", "6400"), ("会议场地租赁", "3200")]


@dataclass(frozen=True)
class Case:
    """One request, who decides it and how, and the state every holder must end in."""

    event: dict[str, Any]
    holders: tuple[str, ...]
    steps: tuple[tuple[str, str, str], ...]  # (user, action, comment)
    final: str  # approved / rejected / withdrawn


def _event(
    eid: str,
    kind: str,
    title: str,
    applicant: Person,
    mode: str,
    approvers: list[str],
    fields: list[dict[str, str]],
    summary: str,
) -> dict[str, Any]:
    data = {
        "request_id": f"OA-{eid}",
        "kind": kind,
        "title": title,
        "applicant": applicant.name,
        "mode": mode,
        "approvers": approvers,
        "cc": [applicant.user],
        "fields": fields,
        "summary": summary,
    }
    return {"event_id": eid, "type": "oa.request", "data": data}


def leave(org: Org, village: str, eid: str, rng: random.Random) -> dict[str, Any]:
    """A village clerk's leave: the village head, then the township head (依次审批)."""
    who = rng.choice(org.staff(village))
    township = org.unit(village).parent or village
    approvers = [org.leaders(village)[0].user, org.leaders(township)[0].user]
    days = rng.choice((1, 2, 3, 5))
    reason = rng.choice(REASONS)
    return _event(
        eid,
        "leave",
        f"{who.name}请假 {days} 天",
        who,
        "chain",
        approvers,
        [{"label": "事由", "value": reason}, {"label": "天数", "value": str(days)}],
        f"**单位**：{org.unit(village).name}",
    )


def document(org: Org, county: str, eid: str, rng: random.Random) -> dict[str, Any]:
    """A county document: its leaders and the office head countersign (会签)."""
    office = f"{county}.ban"
    who = rng.choice(org.staff(office))
    approvers = [p.user for p in org.leaders(county)] + [org.leaders(office)[0].user]
    title = rng.choice(DOCUMENTS)
    return _event(
        eid,
        "document",
        title,
        who,
        "countersign",
        approvers,
        [{"label": "发文单位", "value": org.unit(county).name}],
        f"拟以**{org.unit(county).name}**名义印发。",
    )


def expense(org: Org, township: str, eid: str, rng: random.Random) -> dict[str, Any]:
    """A township expense: any one of the township's leaders decides (或签)."""
    who = rng.choice(org.staff(township))
    approvers = [p.user for p in org.leaders(township)]
    what, amount = rng.choice(EXPENSES)
    return _event(
        eid,
        "expense",
        f"{what} {amount} 元",
        who,
        "any_leader",
        approvers,
        [{"label": "金额", "value": f"{amount} 元"}, {"label": "用途", "value": what}],
        f"**报销单位**：{org.unit(township).name}",
    )


def plan(org: Org, quick: bool) -> list[Case]:
    """The scripted requests: quick is one of each kind; full covers every unit."""
    rng, n = random.Random(7), count(1)
    townships = org.at_level("township")[: 1 if quick else None]
    counties = org.at_level("county")[: 1 if quick else None]
    cases: list[Case] = []
    for t in townships:
        village = f"{t.id}.v1"
        ev = leave(org, village, f"leave-{next(n):04d}", rng)
        a, b = ev["data"]["approvers"]
        cases.append(
            Case(ev, _holders(ev), ((a, "approve", "同意"), (b, "approve", "")), "approved")
        )
        ev = expense(org, t.id, f"expense-{next(n):04d}", rng)
        deputy = ev["data"]["approvers"][1]
        cases.append(
            Case(ev, _holders(ev), ((deputy, "reject", "发票不全，请补充后重报"),), "rejected")
        )
    for k in counties:
        ev = document(org, k.id, f"doc-{next(n):04d}", rng)
        steps = tuple((u, "approve", "") for u in ev["data"]["approvers"])
        cases.append(Case(ev, _holders(ev), steps, "approved"))
    ev = leave(org, f"{townships[0].id}.v2", f"leave-{next(n):04d}", rng)
    cases.append(Case(ev, _holders(ev), (), "withdrawn"))  # the applicant withdraws it
    return cases


def _holders(ev: dict[str, Any]) -> tuple[str, ...]:
    return tuple(ev["data"]["approvers"]) + tuple(ev["data"]["cc"])


def _status_names(user: str) -> Callable[[dict[str, Any]], bool]:
    """A card view whose status line (the bot's answer to this decision) names ``user``."""
    return lambda v: user in v["status"]["text"]


FINAL_STATUS = {"approved": "已同意", "rejected": "已驳回", "withdrawn": "申请人已撤回"}
STATES = {"approved": "approved", "rejected": "rejected", "withdrawn": "closed"}


async def scenario(world: DemoWorld, ctx: FlowContext, quick: bool) -> FlowResult:
    """Run every case of :func:`plan`; count what happened and what did not."""
    assert isinstance(ctx.system, OASystem)
    oa, res, clients = ctx.system, FlowResult(), Clients(world.client)
    try:
        for case in plan(world.org, quick):
            await _run_case(world, oa, clients, case, res)
    finally:
        await clients.close()
    decided = res.counters.get("decisions", 0)
    if not await until(lambda: len(oa.decisions) >= decided):
        res.problems.append(f"OA received {len(oa.decisions)} of {decided} decisions")
    res.counters["forwarded"] = len(oa.decisions)
    res.counters["forward_repeats"] = len(oa.deliveries) - len(oa.decisions)
    return res


async def _run_case(
    world: DemoWorld, oa: OASystem, clients: Clients, case: Case, res: FlowResult
) -> None:
    eid = case.event["event_id"]
    for u in case.holders:
        await clients.get(u)
    status, answer = await oa.send_event(world.events_url("oa"), case.event)
    if status != 201:
        res.problems.append(f"{eid}: the bot answered {status} {answer}")
        return
    res.add("requests")
    views = [await card_message(await clients.get(u), "ev-" + eid) for u in case.holders]
    res.add("cards_held", len(views))
    card_id = views[0]["card_id"]
    if case.final == "withdrawn":
        withdraw = {
            "event_id": f"{eid}-w",
            "type": "oa.withdrawn",
            "data": {"request_event_id": eid},
        }
        status, answer = await oa.send_event(world.events_url("oa"), withdraw)
        if status != 201:
            res.problems.append(f"{eid}: withdrawal answered {status} {answer}")
            return
    for i, (user, action, comment) in enumerate(case.steps):
        c = await clients.get(user)
        await act(c, card_id, action, **({"comment": comment} if comment else {}))
        res.add("decisions")
        if i + 1 < len(case.steps):  # the bot's status line for this step, before the next
            await card_reaching(c, card_id, _status_names(user))
    want = FINAL_STATUS[case.final]
    for u in case.holders:
        try:
            await card_reaching(
                await clients.get(u),
                card_id,
                lambda v: v["state"] == STATES[case.final] and v["status"]["text"].startswith(want),
            )
        except TimeoutError:
            res.problems.append(f"{eid}: {u} never saw the card {case.final} ({want})")
            return
    res.add(case.final)
    res.add("holders_saw_final", len(case.holders))


def live_events(org: Org, rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless stream of realistic OA requests for ``run`` (ids unique per run)."""
    stamp = rng.randrange(10**6)
    for n in count(1):
        eid = f"live-{stamp:06d}-{n:05d}"
        kind = rng.choice(("leave", "leave", "document", "expense"))
        # Every third request involves the first village's chain, so the person
        # the instructions suggest watching sees cards arrive within a minute.
        pick = (lambda units: units[0]) if n % 3 == 1 else rng.choice
        if kind == "leave":
            yield leave(org, pick(org.at_level("village")).id, eid, rng)
        elif kind == "document":
            yield document(org, pick(org.at_level("county")).id, eid, rng)
        else:
            yield expense(org, pick(org.at_level("township")).id, eid, rng)


FLOW = Flow(
    name="oa",
    title="统建 OA 审批",
    bot_class="bots.oa:OABot",
    make_system=lambda secret, org: OASystem(secret),
    scenario=scenario,
    live_events=live_events,
)
