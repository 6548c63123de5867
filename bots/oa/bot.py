"""统建 OA approval bot: a request becomes an approval card; each decision goes back to OA.

Event ``oa.request`` (docs/bots.md has the full contract)::

    {"request_id": "OA-2026-0042", "kind": "leave", "title": "张三请假 3 天",
     "applicant": "张三", "mode": "chain", "approvers": ["li", "wang"],
     "cc": ["zhao"], "fields": [{"label": "事由", "value": "家中有事"}],
     "summary": "**起止**：11月27日—11月29日", "due_at": 1764400000000}

``mode``: ``chain`` → 依次审批 (sequential), ``countersign`` → 会签 (all),
``any_leader`` → 或签 (any). ``oa.withdrawn`` ``{"request_event_id": ...}``
closes the card of an earlier request.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bots.oa.fields import optional_int, text, user_list
from bots.runtime import Bot, BotAction, BotEvent, BusinessCall, CardPush, CardUpdate, EventRejected

KINDS = {"leave": "请假", "document": "公文", "expense": "报销"}
POLICIES = {"chain": "sequential", "countersign": "all", "any_leader": "any"}
MODE_LABELS = {"chain": "依次审批", "countersign": "会签", "any_leader": "或签"}
#: The card model's limit on a status line (cards/model.py).
STATUS_MAX = 32
ACTIONS = [
    {"id": "approve", "label": "同意", "decision": "approve", "style": "primary"},
    {"id": "reject", "label": "驳回", "decision": "reject", "style": "danger"},
]
INPUTS = [
    {"id": "comment", "type": "text", "label": "意见", "max_len": 500, "required_for": ["reject"]}
]


class OABot(Bot):
    """OA requests → approval cards; 同意/驳回 → ``oa.decision`` forwards."""

    REFUSALS: ClassVar[dict[str, str]] = {"no_such_user": "unknown_approver"}

    def on_event(self, event: BotEvent) -> CardPush | CardUpdate | None:
        d = event.data
        if event.type == "oa.withdrawn":
            status = {"text": "申请人已撤回", "color": "gray"}
            changes = {"state": "closed", "status": status}
            return CardUpdate(changes, event_id=text(d, "request_event_id", 56))
        if event.type != "oa.request":
            raise EventRejected("unknown_event_type", f"no such event type {event.type!r}", "type")
        kind, mode = text(d, "kind", 16), text(d, "mode", 16)
        if kind not in KINDS:
            raise EventRejected(
                "invalid_field", f"kind must be one of {sorted(KINDS)}", "data.kind"
            )
        if mode not in POLICIES:
            raise EventRejected(
                "invalid_field", f"mode must be one of {sorted(POLICIES)}", "data.mode"
            )
        approvers = user_list(d, "approvers", required=True)
        cc = [u for u in user_list(d, "cc", required=False) if u not in approvers]
        fields = [
            {"label": "申请人", "value": text(d, "applicant", 32)},
            {"label": "单号", "value": text(d, "request_id", 64)},
            {"label": "审批方式", "value": MODE_LABELS[mode]},
            *_extra_fields(d),
        ]
        card: dict[str, Any] = {
            "title": f"{KINDS[kind]}审批：{text(d, 'title', 100)}",
            "fields": fields,
            "status": {"text": "待审批", "color": "orange"},
            "actions": ACTIONS,
            "inputs": INPUTS,
            "policy": {"type": POLICIES[mode], "actors": approvers},
        }
        summary = d.get("summary")
        if summary is not None:
            card["body_md"] = text(d, "summary", 4000)
        due_at = optional_int(d, "due_at")
        if due_at is not None:
            card["due_at"] = due_at
        return CardPush(card, users=tuple(approvers + cc))

    def on_action(self, action: BotAction) -> tuple[BusinessCall | None, CardUpdate | None]:
        cb, data = action.callback, action.event.data if action.event else {}
        comment = str(cb.inputs.get("comment", ""))
        decision = {
            "type": "oa.decision",
            "request_id": data.get("request_id"),
            "actor": cb.actor,
            "decision": cb.decision,
            "comment": comment,
            "state": cb.state,
            "final": cb.state != "open",
            "at": cb.at,
        }
        return BusinessCall(decision), CardUpdate({"status": _status(cb.state, cb.actor, data)})


def _status(state: str, actor: str, data: dict[str, Any]) -> dict[str, str]:
    """The status line after a decision (the decisions themselves are in the card view)."""
    if state == "approved":
        return {"text": _fit(f"已同意（{actor}）", "已同意"), "color": "green"}
    if state == "rejected":
        return {"text": _fit(f"已驳回（{actor}）", "已驳回"), "color": "red"}
    chain = [str(a) for a in data.get("approvers", [])]
    if data.get("mode") == "chain" and actor in chain and chain.index(actor) + 1 < len(chain):
        after = chain[chain.index(actor) + 1]
        return {
            "text": _fit(
                f"{actor}已同意，待{after}审批", f"{actor}已同意", f"待{after}审批", "审批中"
            ),
            "color": "blue",
        }
    return {"text": _fit(f"会签中：{actor}已同意", f"{actor}已同意", "会签中"), "color": "blue"}


def _fit(*texts: str) -> str:
    """The first text that fits a status line (32 characters); a name is never cut short.

    Long user ids would not fit with the words around them; the card's trail
    names every actor in full anyway.
    """
    return next((t for t in texts if len(t) <= STATUS_MAX), texts[-1][:STATUS_MAX])


def _extra_fields(d: dict[str, Any]) -> list[dict[str, str]]:
    raw = d.get("fields", [])
    if not isinstance(raw, list) or len(raw) > 20:
        raise EventRejected("invalid_field", "fields must be a list of at most 20", "data.fields")
    out = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict):
            raise EventRejected("invalid_field", "a field is {label, value}", f"data.fields[{i}]")
        out.append({"label": text(f, "label", 64, f"data.fields[{i}]"),
                    "value": text(f, "value", 1000, f"data.fields[{i}]")})  # fmt: skip
    return out
