"""The card document: schema validation, updates, and the view people see.

``parse_card`` turns an app's JSON into a normalised document (only known
keys, checked types and sizes) or raises ``InvalidField`` naming the path,
e.g. ``card.actions[1].decision``. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from cards.policy import (
    ACTION_KINDS,
    DECISION,
    DECISIONS,
    FINAL_STATES,
    LINK,
    POLICY_TYPES,
    RETURN,
    RETURN_TARGETS,
    SEQUENTIAL,
    TO_STEP,
    ApprovalState,
    DecisionRecord,
    Policy,
    actionable_by,
)
from cards.workflow_inputs import link_url, target_from_json, target_to_json
from imserver.config import CardsConfig
from imserver.errors import InvalidField
from imserver.masking import mask
from imserver.protocol.fields import is_user_id

TRACK_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ITEM_ID_RE = re.compile(r"[a-z0-9_-]{1,32}")
COLORS = ("gray", "blue", "green", "orange", "red")
STYLES = ("default", "primary", "danger")
INPUT_TYPES = ("text", "select")
MAX_ACTIONS = 8
MAX_INPUTS = 8
MAX_ACTORS = 100
UPDATABLE = ("title", "fields", "body_md", "status", "actions", "inputs", "due_at", "escalate_to")


def _fail(path: str, why: str) -> InvalidField:
    return InvalidField(f"{path}: {why}", field=path)


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, "must be an object")
    return value


def _list(value: Any, path: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, "must be a list")
    if len(value) > max_items:
        raise _fail(path, f"may hold at most {max_items} items")
    return value


def _str(value: Any, path: str, min_len: int, max_len: int) -> str:
    if not isinstance(value, str):
        raise _fail(path, "must be a string")
    if not min_len <= len(value) <= max_len:
        raise _fail(path, f"must be {min_len}-{max_len} characters")
    return value


def _choice(value: Any, path: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise _fail(path, f"must be one of {', '.join(options)}")
    assert isinstance(value, str)
    return value


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise _fail(path, "must be a non-negative integer")
    return value


def _fields(value: Any, path: str, limits: CardsConfig) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(_list(value, path, limits.max_fields)):
        p = f"{path}[{i}]"
        f = _obj(item, p)
        out.append(
            {
                "label": _str(f.get("label"), f"{p}.label", 1, 64),
                "value": _str(f.get("value", ""), f"{p}.value", 0, 1000),
                "sensitive": _bool(f.get("sensitive", False), f"{p}.sensitive"),
            }
        )
    return out


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "must be true or false")
    return value


def _status(value: Any, path: str) -> dict[str, Any]:
    s = _obj(value, path)
    return {
        "text": _str(s.get("text"), f"{path}.text", 1, 32),
        "color": _choice(s.get("color", "gray"), f"{path}.color", COLORS),
    }


def _actions(value: Any, path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, path, MAX_ACTIONS)):
        p = f"{path}[{i}]"
        a = _obj(item, p)
        action_id = _str(a.get("id"), f"{p}.id", 1, 32)
        if not ITEM_ID_RE.fullmatch(action_id):
            raise _fail(f"{p}.id", "must be 1-32 of a-z 0-9 _ -")
        if any(x["id"] == action_id for x in out):
            raise _fail(f"{p}.id", f"duplicate action id {action_id!r}")
        kind = _choice(a.get("kind", DECISION), f"{p}.kind", ACTION_KINDS)
        entry: dict[str, Any] = {
            "id": action_id,
            "label": _str(a.get("label"), f"{p}.label", 1, 16),
            "kind": kind,
            "style": _choice(a.get("style", "default"), f"{p}.style", STYLES),
        }
        if kind == DECISION:
            entry["decision"] = _choice(a.get("decision"), f"{p}.decision", DECISIONS)
        elif "decision" in a:
            raise _fail(f"{p}.decision", f"only a decision action has one (this is {kind})")
        if kind == RETURN:
            entry["to"] = _choice(a.get("to"), f"{p}.to", RETURN_TARGETS)
        if kind == LINK:
            entry["url"] = link_url(a.get("url"), f"{p}.url")
        out.append(entry)
    return out


def _workflow_rules(doc: dict[str, Any], path: str) -> None:
    """What an action needs from the rest of the card (docs/cards.md "OA actions")."""
    for i, a in enumerate(doc["actions"]):
        if a["kind"] != RETURN:
            continue
        p = f"{path}.actions[{i}]"
        if a["to"] == TO_STEP and (doc["policy"] or {}).get("type") != SEQUENTIAL:
            raise _fail(f"{p}.to", "a return to a step needs a sequential policy")
        if not any(d["type"] == "text" and a["id"] in d["required_for"] for d in doc["inputs"]):
            raise _fail(p, "a return action needs a text input required for it (the reason)")


def _inputs(value: Any, path: str, action_ids: set[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, path, MAX_INPUTS)):
        p = f"{path}[{i}]"
        d = _obj(item, p)
        input_id = _str(d.get("id"), f"{p}.id", 1, 32)
        if not ITEM_ID_RE.fullmatch(input_id):
            raise _fail(f"{p}.id", "must be 1-32 of a-z 0-9 _ -")
        if any(x["id"] == input_id for x in out):
            raise _fail(f"{p}.id", f"duplicate input id {input_id!r}")
        kind = _choice(d.get("type"), f"{p}.type", INPUT_TYPES)
        entry: dict[str, Any] = {
            "id": input_id,
            "type": kind,
            "label": _str(d.get("label"), f"{p}.label", 1, 32),
        }
        if kind == "text":
            max_len = _int(d.get("max_len", 500), f"{p}.max_len")
            if not 1 <= max_len <= 2000:
                raise _fail(f"{p}.max_len", "must be 1-2000")
            entry["max_len"] = max_len
        else:
            options = []
            for j, opt in enumerate(_list(d.get("options"), f"{p}.options", 50)):
                op = _obj(opt, f"{p}.options[{j}]")
                options.append(
                    {
                        "value": _str(op.get("value"), f"{p}.options[{j}].value", 1, 64),
                        "label": _str(op.get("label"), f"{p}.options[{j}].label", 1, 64),
                    }
                )
            if not options:
                raise _fail(f"{p}.options", "must not be empty")
            entry["options"] = options
        required = _list(d.get("required_for", []), f"{p}.required_for", MAX_ACTIONS)
        for j, ref in enumerate(required):
            if not isinstance(ref, str) or ref not in action_ids:
                raise _fail(f"{p}.required_for[{j}]", "must name an action id of this card")
        entry["required_for"] = list(dict.fromkeys(required))
        out.append(entry)
    return out


def _policy(value: Any, path: str) -> dict[str, Any]:
    p = _obj(value, path)
    kind = _choice(p.get("type"), f"{path}.type", POLICY_TYPES)
    actors = _list(p.get("actors"), f"{path}.actors", MAX_ACTORS)
    if not actors:
        raise _fail(f"{path}.actors", "must not be empty")
    for i, a in enumerate(actors):
        if not is_user_id(a):
            raise _fail(f"{path}.actors[{i}]", "must be a user id")
    if len(set(actors)) != len(actors):
        raise _fail(f"{path}.actors", "must not repeat a user")
    return {"type": kind, "actors": list(actors)}


def parse_card(value: Any, limits: CardsConfig, path: str = "card") -> dict[str, Any]:
    """A normalised card document, or ``InvalidField`` naming the bad path."""
    c = _obj(value, path)
    track = _str(c.get("out_track_id"), f"{path}.out_track_id", 1, 64)
    if not TRACK_ID_RE.fullmatch(track) or set(track) == {"."}:
        raise _fail(f"{path}.out_track_id", "must be 1-64 of A-Z a-z 0-9 _ - . : (not only dots)")
    doc: dict[str, Any] = {
        "out_track_id": track,
        "title": _str(c.get("title"), f"{path}.title", 1, limits.max_title_chars),
        "fields": _fields(c.get("fields", []), f"{path}.fields", limits),
        "body_md": _str(c.get("body_md", ""), f"{path}.body_md", 0, limits.max_body_chars),
        "status": _status(c["status"], f"{path}.status") if c.get("status") is not None else None,
        "actions": _actions(c.get("actions", []), f"{path}.actions"),
    }
    doc["inputs"] = _inputs(
        c.get("inputs", []), f"{path}.inputs", {a["id"] for a in doc["actions"]}
    )
    doc["policy"] = _policy(c["policy"], f"{path}.policy") if c.get("policy") is not None else None
    doc["due_at"] = _int(c["due_at"], f"{path}.due_at") if c.get("due_at") is not None else None
    escalate = c.get("escalate_to")
    if escalate is not None and not is_user_id(escalate):
        raise _fail(f"{path}.escalate_to", "must be a user id")
    if escalate is not None and doc["due_at"] is None:
        raise _fail(f"{path}.escalate_to", "needs a due_at")
    doc["escalate_to"] = escalate
    doc["urgent"] = _bool(c.get("urgent", False), f"{path}.urgent")
    if doc["policy"] is not None and not doc["actions"]:
        raise _fail(f"{path}.actions", "a card with a policy needs at least one action")
    _workflow_rules(doc, path)
    size = len(orjson.dumps(doc))
    if size > limits.max_card_bytes:
        raise _fail(path, f"is {size} bytes as JSON; the limit is {limits.max_card_bytes}")
    return doc


@dataclass(slots=True, frozen=True)
class CardUpdate:
    changes: dict[str, Any]  # normalised replacements for keys in UPDATABLE
    state: str | None
    if_version: int | None


def parse_update(value: Any, current: dict[str, Any], limits: CardsConfig) -> CardUpdate:
    """Validate an update against the current document (so references stay valid)."""
    u = _obj(value, "update")
    unknown = set(u) - {*UPDATABLE, "state", "if_version"}
    if unknown:
        raise _fail(f"update.{sorted(unknown)[0]}", "is not an updatable key")
    merged = dict(current)
    for key in UPDATABLE:
        if key in u:
            merged[key] = u[key]
    doc = parse_card(merged, limits, path="update")  # re-validate the whole result
    changes = {k: doc[k] for k in UPDATABLE if k in u}
    state = _choice(u["state"], "update.state", FINAL_STATES) if "state" in u else None
    if_version = _int(u["if_version"], "update.if_version") if "if_version" in u else None
    return CardUpdate(changes, state, if_version)


def check_inputs(doc: dict[str, Any], action: str, inputs: Any) -> dict[str, str]:
    """The inputs sent with ``action``: known ids, right types, required ones present."""
    given = _obj(inputs if inputs is not None else {}, "inputs")
    specs = {i["id"]: i for i in doc["inputs"]}
    out: dict[str, str] = {}
    for key, value in given.items():
        spec = specs.get(key)
        if spec is None:
            raise _fail(f"inputs.{key}", "is not an input of this card")
        if spec["type"] == "text":
            out[key] = _str(value, f"inputs.{key}", 0, spec["max_len"])
        else:
            if value not in [o["value"] for o in spec["options"]]:
                raise _fail(f"inputs.{key}", "must be one of the card's options")
            out[key] = value
    for spec in doc["inputs"]:
        if action in spec["required_for"] and not out.get(spec["id"], "").strip():
            raise _fail(f"inputs.{spec['id']}", f"is required for {action!r}")
    return out


def policy_of(doc: dict[str, Any]) -> Policy | None:
    p = doc.get("policy")
    return None if p is None else Policy(p["type"], tuple(p["actors"]))


def render_view(
    *,
    card_id: str,
    app_id: str,
    version: int,
    doc: dict[str, Any],
    approval: ApprovalState,
    callback: str,
    overdue: bool = False,
    escalation: dict[str, Any] | None = None,
    reveal: bool = False,
) -> dict[str, Any]:
    """What a holder sees: the document, its state, and who may act now.

    The view is the same for every viewer (so it is encoded once per fan-out):
    each client enables buttons when its user is in ``actionable_by``.
    """
    fields = [
        {**f, "value": f["value"] if reveal or not f["sensitive"] else mask(f["value"])}
        for f in doc["fields"]
    ]
    return {
        "card_id": card_id,
        "app_id": app_id,
        "version": version,
        "out_track_id": doc["out_track_id"],
        "title": doc["title"],
        "fields": fields,
        "body_md": doc["body_md"],
        "status": doc["status"],
        "actions": doc["actions"],
        "inputs": doc["inputs"],
        "policy": doc["policy"],
        "due_at": doc["due_at"],
        "overdue": overdue,
        "urgent": doc.get("urgent", False),
        "escalate_to": doc.get("escalate_to"),
        # null, or how escalation ended when it did not happen, e.g.
        # {"to": "bob", "state": "refused", "reason": "out_of_scope", "at": ms}
        "escalation": escalation,
        "state": approval.state,
        "actionable_by": list(actionable_by(approval)),
        "decisions": [
            {"actor": d.actor, "action": d.action, "decision": d.decision, "at": d.at}
            for d in approval.decisions
        ],
        # Every accepted act (decisions, 已阅, 转交, 加签, 退回) in order; a decision
        # a later return voided is kept here, marked, and no longer counts.
        "trail": trail_view(approval),
        "decided_by": approval.decided_by,
        # Delivery status of the callbacks ("none" before the first, "pending",
        # "ok", "failed"): kept at the card's version, never a version of its
        # own (docs/cards.md section 6).
        "callback": callback,
    }


def trail_view(s: ApprovalState) -> list[dict[str, Any]]:
    """The trail as holders see it (no inputs, no action ids)."""
    voided = {v for d in s.trail for v in d.voided}
    return [
        {
            "actor": d.actor,
            "action": d.action,
            "kind": d.kind,
            "decision": d.decision,
            "target": target_to_json(d.target),
            "at": d.at,
            "voided": d.action_id in voided,
        }
        for d in (s.trail or s.decisions)
    ]


def _record_to_json(d: DecisionRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action_id": d.action_id,
        "actor": d.actor,
        "action": d.action,
        "decision": d.decision,
        "at": d.at,
        "inputs": dict(d.inputs),
        "kind": d.kind,
        "target": target_to_json(d.target),
    }
    if d.voided:  # a return: the action ids of the decisions it voided
        out["voided"] = list(d.voided)
    return out


def _record_from_json(d: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord(
        d["action_id"],
        d["actor"],
        d["action"],
        d["decision"],
        d["at"],
        d["inputs"],
        d.get("kind", DECISION),
        target_from_json(d.get("target")),
        tuple(d.get("voided", ())),
    )


def approval_to_json(s: ApprovalState) -> dict[str, Any]:
    data: dict[str, Any] = {
        "state": s.state,
        "decided_by": s.decided_by,
        "decisions": [_record_to_json(d) for d in s.decisions],
    }
    if s.trail:
        data["trail"] = [_record_to_json(d) for d in s.trail]
    return data


def approval_from_json(doc: dict[str, Any], data: dict[str, Any]) -> ApprovalState:
    """The approval state; the actors are the document's (transfer and add-sign edit them)."""
    return ApprovalState(
        policy=policy_of(doc),
        state=data["state"],
        decisions=tuple(_record_from_json(d) for d in data["decisions"]),
        decided_by=data["decided_by"],
        trail=tuple(_record_from_json(d) for d in data.get("trail", ())),
    )
