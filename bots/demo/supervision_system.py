"""A simulated 督查督办 system: issues tasks down the five levels, records the reports.

The business-system side of the supervision bot's contract: it signs each
``supervision.task`` with the shared secret and keeps every forward
(``supervision.progress`` / ``supervision.done``) once per
``Idempotency-Key``. Like a real 督办 system it knows the org: a task names
the units it is split into (parents first), each with its handlers and
leader, and the issuer at the province's 督查室.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bots.demo.oa_system import OASystem
from bots.demo.org import Org

#: (title, what the units must do)
TASKS = [
    (
        "防汛救灾隐患排查整治",
        "请各级单位于汛期前完成辖区内水库、山塘、堤防隐患排查，逐一建立台账并落实整改责任人。",
    ),
    (
        "安全生产大检查",
        "请各单位组织开展安全生产大检查，重点检查危化品、燃气、"
        "消防和自建房安全，报送检查及整改情况。",
    ),
    (
        "耕地保护专项督查",
        "请各级单位核查辖区内违法占用耕地问题，按时完成整改复耕并报送进展。",
    ),
]
PROGRESS = ["已召开专题会议部署，正在逐项排查。", "已完成排查，发现问题已建立台账，正在整改。"]
DONE = "问题已全部整改到位，台账已归档。"


class SupervisionSystem(OASystem):
    """The 督办 side: ``send_event`` a task to the bot, ``decisions`` = the units' reports."""


def sub_unit(org: Org, unit_id: str) -> dict[str, Any]:
    unit = org.unit(unit_id)
    return {
        "id": unit.id,
        "name": unit.name,
        "level": unit.level,
        "parent": unit.parent,
        "handlers": [p.user for p in org.staff(unit_id)],
        "leader": org.leaders(unit_id)[0].user,
    }


def task_event(
    org: Org, unit_ids: list[str], eid: str, rng: random.Random, *, due_in_s: float = 7 * 86400
) -> dict[str, Any]:
    """One ``supervision.task`` from the province's 督查室 to ``unit_ids`` (parents first)."""
    title, content = rng.choice(TASKS)
    units = [sub_unit(org, u) for u in unit_ids]
    listed = {u["id"] for u in units}
    for u in units:  # a unit's parent, if not itself part of the task, is not named
        if u["parent"] not in listed:
            u["parent"] = None
    data = {
        "task_id": f"DB-{eid}",
        "title": title,
        "content": content,
        "issuer": org.staff("jx.ban")[0].user,
        "issuer_unit": "省政府督查室",
        "due_at": int((time.time() + due_in_s) * 1000),
        "units": units,
    }
    return {"event_id": eid, "type": "supervision.task", "data": data}


def down_the_levels(org: Org, city: str, townships: int) -> list[str]:
    """A city, its counties, ``townships`` townships per county and each one's first village."""
    out = [city]
    for county in [u for u in org.units if u.parent == city and u.level == "county"]:
        out.append(county.id)
        towns = [u for u in org.units if u.parent == county.id and u.level == "township"]
        for t in towns[:townships]:
            out += [t.id, f"{t.id}.v1"]
    return out
