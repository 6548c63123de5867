"""A 12345 case (工单) as the platform sends it, checked, and the two cards made from it.

The server's cards decide once (docs/cards.md section 3), so a case lives on
two kinds of card: a **dispatch** card to the unit's handlers (签收 / 转办 /
退回, any of them decides) and, after 签收, a **handling** card to the
claimer alone (办结 / 转办 / 退回). Both carry the statutory deadline: the
server reminds the pending handlers before it and, if the card is still open
at it, escalates to the unit's leader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bots.runtime import EventRejected
from bots.runtime.fields import deadline, ident, obj, objects, optional_text, people, text, when

MAX_TRANSFER_UNITS = 10


@dataclass(frozen=True, slots=True)
class Unit:
    """An org unit the case may go to: its handlers act, its leader is escalated to."""

    id: str
    name: str
    handlers: tuple[str, ...]
    leader: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "handlers": list(self.handlers),
                "leader": self.leader}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Case:
    case_id: str
    title: str
    category: str | None
    citizen: str
    phone: str
    address: str | None
    content: str
    due_at: int
    units: tuple[Unit, ...]  # the first is where the platform dispatched it

    def unit(self, unit_id: str) -> Unit:
        """A unit of the case; the bot wrote the ids into its own cards, so it exists."""
        return next(u for u in self.units if u.id == unit_id)

    def others(self, unit_id: str) -> list[Unit]:
        """Where a case at ``unit_id`` may be transferred to."""
        return [u for u in self.units if u.id != unit_id]


def parse_unit(d: dict[str, Any], where: str) -> Unit:
    handlers = people(d, "handlers", where)
    return Unit(ident(d, "id", where), text(d, "name", 64, where), tuple(handlers),
                ident(d, "leader", where))  # fmt: skip


def parse_case(data: dict[str, Any]) -> Case:
    """``hotline.case`` data → :class:`Case`, or :class:`EventRejected` naming the field."""
    units = [parse_unit(obj(data, "unit"), "data.unit")]
    extra = objects(data, "transfer_units", MAX_TRANSFER_UNITS)
    units += [parse_unit(u, f"data.transfer_units[{i}]") for i, u in enumerate(extra)]
    if len({u.id for u in units}) != len(units):
        raise EventRejected("invalid_field", "units must be distinct", "data.transfer_units")
    return Case(
        case_id=text(data, "case_id", 64),
        title=text(data, "title", 100),
        category=optional_text(data, "category", 32),
        citizen=text(data, "citizen", 32),
        phone=text(data, "phone", 32),
        address=optional_text(data, "address", 200),
        content=text(data, "content", 4000),
        due_at=deadline(data),
        units=tuple(units),
    )


def _fields(case: Case, unit: Unit) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = [{"label": "工单编号", "value": case.case_id}]
    if case.category:
        fields.append({"label": "诉求类别", "value": case.category})
    fields += [
        {"label": "来电人", "value": case.citizen},
        # Masked by the server for every holder without pii:read.
        {"label": "联系电话", "value": case.phone, "sensitive": True},
    ]
    if case.address:
        fields.append({"label": "地址", "value": case.address})
    fields += [
        {"label": "承办单位", "value": unit.name},
        {"label": "办理时限", "value": when(case.due_at)},
    ]
    return fields


def _transfer(case: Case, unit: Unit) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The 转办 button and its 转办单位 choice, when there is somewhere to transfer to."""
    others = case.others(unit.id)
    if not others:
        return [], []
    action = {"id": "transfer", "label": "转办", "decision": "reject", "style": "default"}
    choice = {"id": "target", "type": "select", "label": "转办单位",
              "options": [{"value": u.id, "label": u.name} for u in others],
              "required_for": ["transfer"]}  # fmt: skip
    return [action], [choice]


def dispatch_card(case: Case, unit: Unit) -> dict[str, Any]:
    """To every handler of ``unit``: the first of them to act decides."""
    transfer, choice = _transfer(case, unit)
    return {
        "title": f"12345工单：{case.title}"[:128],
        "fields": _fields(case, unit),
        "body_md": case.content,
        "status": {"text": "待签收", "color": "orange"},
        "actions": [
            {"id": "claim", "label": "签收", "decision": "approve", "style": "primary"},
            *transfer,
            {"id": "return", "label": "退回", "decision": "reject", "style": "danger"},
        ],
        "inputs": [
            {
                "id": "reason",
                "type": "text",
                "label": "转办/退回理由",
                "max_len": 500,
                "required_for": ["return", *(["transfer"] if transfer else [])],
            },
            *choice,
        ],
        "policy": {"type": "any", "actors": list(unit.handlers)},
        "due_at": case.due_at,
        "escalate_to": unit.leader,
    }


def handling_card(case: Case, unit: Unit, claimer: str) -> dict[str, Any]:
    """To the claimer alone, after 签收: 办结 needs a reply to the citizen."""
    transfer, choice = _transfer(case, unit)
    return {
        "title": f"12345工单办理：{case.title}"[:128],
        "fields": [*_fields(case, unit), {"label": "签收人", "value": claimer}],
        "body_md": case.content,
        "status": {"text": "办理中", "color": "blue"},
        "actions": [
            {"id": "close", "label": "办结", "decision": "approve", "style": "primary"},
            *transfer,
            {"id": "return", "label": "退回", "decision": "reject", "style": "danger"},
        ],
        "inputs": [
            {
                "id": "reply",
                "type": "text",
                "label": "答复意见",
                "max_len": 2000,
                "required_for": ["close"],
            },
            {
                "id": "reason",
                "type": "text",
                "label": "转办/退回理由",
                "max_len": 500,
                "required_for": ["return", *(["transfer"] if transfer else [])],
            },
            *choice,
        ],
        "policy": {"type": "any", "actors": [claimer]},
        "due_at": case.due_at,
        "escalate_to": unit.leader,
    }
