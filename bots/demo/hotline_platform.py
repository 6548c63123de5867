"""A simulated 12345 platform: dispatches citizens' cases (工单) to units through the bot.

It is the business-system side of the hotline bot's contract: like the OA
system it signs events with the shared secret and records each forward
(``hotline.claimed`` / ``closed`` / ``returned`` / ``transferred``) once per
``Idempotency-Key``. It knows the org the way the real platform does - which
unit a case goes to, who handles cases there and who leads it - so each
case names its unit's handlers and leader.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bots.demo.oa_system import OASystem
from bots.demo.org import Org

#: (诉求类别, title, what the citizen said)
COMPLAINTS = [
    (
        "城市管理",
        "路口流动摊贩占道经营",
        "市民来电反映，每天傍晚路口有流动摊贩占道经营，影响车辆和行人通行，希望尽快处理。",
    ),
    (
        "环境保护",
        "夜间施工噪音扰民",
        "来电人反映附近工地夜间十点后仍在施工，噪音很大，影响休息，请相关部门核查。",
    ),
    (
        "农业农村",
        "村道路灯损坏",
        "来电人反映村里主干道有多盏路灯损坏一个多月，夜间出行不便，存在安全隐患。",
    ),
    (
        "社会保障",
        "养老保险关系转移咨询",
        "来电人从外省返乡，咨询养老保险关系转移接续需要哪些材料、到哪里办理。",
    ),
    (
        "住房建设",
        "老旧小区楼道漏水",
        "来电人反映所住老旧小区楼道屋顶漏水严重，多次联系物业未解决，请求协调维修。",
    ),
    (
        "交通运输",
        "公交站台遮雨棚破损",
        "来电人反映公交站台遮雨棚破损，雨天候车群众无处避雨，希望尽快修复。",
    ),
]
CITIZENS = ["王女士", "李先生", "张女士", "刘先生", "陈女士", "杨先生"]


class HotlinePlatform(OASystem):
    """The 12345 side: ``send_event`` a case to the bot, ``decisions`` = its forwards."""


def unit_json(org: Org, unit_id: str) -> dict[str, Any]:
    """A unit as a case names it: its handlers (the staff) and its leader (the head)."""
    return {
        "id": unit_id,
        "name": org.unit(unit_id).name,
        "handlers": [p.user for p in org.staff(unit_id)],
        "leader": org.leaders(unit_id)[0].user,
    }


def case_event(
    org: Org,
    unit_id: str,
    eid: str,
    rng: random.Random,
    *,
    due_in_s: float = 2 * 3600,
    transfer_to: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One ``hotline.case``: a realistic complaint, a statutory deadline, where it may go."""
    category, title, content = rng.choice(COMPLAINTS)
    unit = org.unit(unit_id)
    data: dict[str, Any] = {
        "case_id": f"12345-{eid}",
        "title": title,
        "category": category,
        "citizen": rng.choice(CITIZENS),
        "phone": f"139{rng.randrange(10**8):08d}",
        "address": f"{org.chain_up(unit_id)[-2].name}{unit.name}",
        "content": content,
        "due_at": int((time.time() + due_in_s) * 1000),
        "unit": unit_json(org, unit_id),
        "transfer_units": [unit_json(org, u) for u in transfer_to],
    }
    return {"event_id": eid, "type": "hotline.case", "data": data}
