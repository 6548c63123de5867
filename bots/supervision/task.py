"""A 督办 task as the supervision system sends it, checked, and the cards made from it.

A task is split into **sub-tasks**, one per unit, down the five levels
(province → city → county → township → village): each unit's handlers get a
sub-task card where they report 进展 (progress) or 办结 (done). The issuer
gets one **aggregate** card listing every unit's state, which the bot
updates after each report and when the deadline passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bots.runtime import EventRejected
from bots.runtime.fields import deadline, ident, objects, optional_text, people, text, when

LEVELS = {
    "province": "省级",
    "city": "市级",
    "county": "县级",
    "township": "乡级",
    "village": "村级",
}
ORDER = list(LEVELS)
#: The aggregate card lists one field per unit; the server allows 30 fields.
MAX_UNITS = 28


@dataclass(frozen=True, slots=True)
class SubUnit:
    id: str
    name: str
    level: str
    parent: str | None
    handlers: tuple[str, ...]
    leader: str


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    title: str
    content: str
    issuer: str
    issuer_unit: str
    due_at: int
    units: tuple[SubUnit, ...]  # parents before their children

    def unit(self, unit_id: str) -> SubUnit:
        return next(u for u in self.units if u.id == unit_id)


def parse_task(data: dict[str, Any]) -> Task:
    """``supervision.task`` data → :class:`Task`; a parent must be listed, and be higher."""
    raw = objects(data, "units", MAX_UNITS)
    if not raw:
        raise EventRejected("missing_field", "units must list at least one unit", "data.units")
    units: list[SubUnit] = []
    for i, u in enumerate(raw):
        where = f"data.units[{i}]"
        level = text(u, "level", 16, where)
        if level not in LEVELS:
            raise EventRejected("invalid_field", f"level must be one of {ORDER}", f"{where}.level")
        parent = None if u.get("parent") is None else ident(u, "parent", where)
        unit = SubUnit(ident(u, "id", where), text(u, "name", 60, where), level, parent,
                       tuple(people(u, "handlers", where)), ident(u, "leader", where))  # fmt: skip
        if any(x.id == unit.id for x in units):
            raise EventRejected("invalid_field", "units must be distinct", f"{where}.id")
        if parent is not None:
            above = next((x for x in units if x.id == parent), None)
            if above is None:
                raise EventRejected(
                    "invalid_field",
                    "parent must be a unit listed before this one",
                    f"{where}.parent",
                )
            if ORDER.index(above.level) >= ORDER.index(level):
                raise EventRejected(
                    "invalid_field", "a unit sits below a higher level", f"{where}.level"
                )
        units.append(unit)
    return Task(
        task_id=text(data, "task_id", 64),
        title=text(data, "title", 100),
        content=text(data, "content", 4000),
        issuer=ident(data, "issuer"),
        issuer_unit=optional_text(data, "issuer_unit", 64) or "督查室",
        due_at=deadline(data),
        units=tuple(units),
    )


def initial_state(task: Task) -> dict[str, Any]:
    """Each unit: ``pending`` → ``progress`` (reported, not done) → ``done``."""
    return {
        "units": {u.id: {"state": "pending", "text": "", "reports": 0} for u in task.units},
        "overdue": False,
    }


def sub_task_card(task: Task, unit: SubUnit, round_no: int, last: str = "") -> dict[str, Any]:
    """A unit's card for its ``round_no``-th report (each card decides once)."""
    fields = [
        {"label": "任务编号", "value": task.task_id},
        {"label": "交办单位", "value": task.issuer_unit},
        {"label": "承办单位", "value": f"{unit.name}（{LEVELS[unit.level]}）"},
        {"label": "办理时限", "value": when(task.due_at)},
        {"label": "报送次数", "value": f"第{round_no}次"},
    ]
    if unit.parent is not None:
        fields.insert(3, {"label": "上级单位", "value": task.unit(unit.parent).name})
    body = task.content + (f"\n\n**上次进展**：{last}" if last else "")
    return {
        "title": f"督办任务：{task.title}"[:128],
        "fields": fields,
        "body_md": body,
        "status": {"text": "待报送进展", "color": "orange"},
        "actions": [
            {"id": "progress", "label": "报送进展", "decision": "approve", "style": "default"},
            {"id": "done", "label": "办结", "decision": "approve", "style": "primary"},
        ],
        "inputs": [
            {
                "id": "progress",
                "type": "text",
                "label": "进展情况",
                "max_len": 1000,
                "required_for": ["progress", "done"],
            },
        ],
        "policy": {"type": "any", "actors": list(unit.handlers)},
        "due_at": task.due_at,
        "escalate_to": unit.leader,
    }


_UNIT_TEXT = {"pending": "未报送", "progress": "进展", "done": "已办结"}


def aggregate_changes(task: Task, state: dict[str, Any]) -> dict[str, Any]:
    """The issuer's card: one line per unit, indented by level, and a count."""
    units = state["units"]
    fields = []
    for u in task.units:
        s = units[u.id]
        value = _UNIT_TEXT[s["state"]]
        if s["state"] != "pending":
            value += f"（第{s['reports']}次）：{s['text']}"
        if state["overdue"] and s["state"] != "done":
            value = "【已逾期】" + value
        indent = "　" * ORDER.index(u.level)
        fields.append({"label": f"{indent}{u.name}"[:64], "value": value[:1000]})
    done = sum(1 for s in units.values() if s["state"] == "done")
    if done == len(units):
        status = {"text": f"全部办结 {done}/{len(units)}", "color": "green"}
    elif state["overdue"]:
        status = {"text": f"已逾期 办结{done}/{len(units)}", "color": "red"}
    else:
        status = {"text": f"督办中 办结{done}/{len(units)}", "color": "blue"}
    return {"fields": fields, "status": status}


def aggregate_card(task: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Informational (no policy): the issuer watches, the units act on their own cards."""
    return {
        "title": f"督办总览：{task.title}"[:128],
        "body_md": f"**任务编号**：{task.task_id}　**办理时限**：{when(task.due_at)}\n\n"
        + task.content,
        **aggregate_changes(task, state),
    }
