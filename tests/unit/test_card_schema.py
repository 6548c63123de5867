"""docs/card.schema.json agrees with ``cards.model.parse_card`` (default limits).

Contract: docs/cards.md section 3 (the card's fields) and the schema's own
``$comment``, which lists the rules JSON Schema cannot express (unique action
and input ids, ``required_for`` naming existing actions, the 32 KiB size limit,
integers written as 5.0 or 5e2, actors being recipients). For every other rule
the two must agree both ways; for those, the schema may only be more lenient.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from cards.model import parse_card
from imserver.config import CardsConfig
from imserver.errors import InvalidField

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "card.schema.json"
CARDS_DOC = ROOT / "docs" / "cards.md"
LIMITS = CardsConfig()
SCHEMA: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)


def _worked_example() -> dict[str, Any]:
    """The first ```json block under "## 3. The card" in docs/cards.md."""
    text = CARDS_DOC.read_text(encoding="utf-8")
    start = text.index("\n## 3. The card")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    opening = "```json\n"
    body_start = section.index(opening) + len(opening)
    body_end = section.index("\n```", body_start)
    card = json.loads(section[body_start:body_end])
    assert isinstance(card, dict)
    return card


def _server_accepts(card: Any) -> bool:
    try:
        parse_card(card, LIMITS)
    except InvalidField:
        return False
    return True


def _server_field(card: Any) -> str | None:
    """The path parse_card names, or None if it accepts the card."""
    try:
        parse_card(card, LIMITS)
    except InvalidField as e:
        return e.field
    return None


def _schema_accepts(card: Any) -> bool:
    return bool(VALIDATOR.is_valid(card))


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.update(changes)
    return out


def _without(base: dict[str, Any], *keys: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k in keys:
        del out[k]
    return out


MIN: dict[str, Any] = {"out_track_id": "t-1", "title": "标题"}
APPROVE = {"id": "approve", "label": "同意", "decision": "approve", "style": "primary"}
REJECT = {"id": "reject", "label": "驳回", "decision": "reject", "style": "danger"}
SELECT = {
    "id": "level",
    "type": "select",
    "label": "级别",
    "options": [{"value": "a", "label": "A"}, {"value": "b", "label": "B"}],
}
TEXT = {"id": "comment", "type": "text", "label": "意见", "max_len": 500}
POLICY = {"type": "any", "actors": ["li", "wang"]}
DECIDING: dict[str, Any] = _with(MIN, actions=[APPROVE, REJECT], policy=POLICY)
WITH_INPUTS: dict[str, Any] = _with(DECIDING, inputs=[TEXT, SELECT])
MAX_ACTORS = [f"user.{i:03d}@dept-x_{'y' * 48}" for i in range(100)]  # 64 chars each
ALL_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"
ALL_TRACK_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"

VALID: list[tuple[str, dict[str, Any]]] = [
    ("worked example (docs/cards.md section 3)", _worked_example()),
    ("minimal", MIN),
    (
        "null optionals mean absent",
        _with(MIN, status=None, policy=None, due_at=None, escalate_to=None),
    ),
    (
        "unknown keys everywhere are ignored",
        _with(
            WITH_INPUTS,
            extra=1,
            fields=[{"label": "l", "value": "v", "x": []}],
            status={"text": "s", "x": None},
            actions=[{**APPROVE, "x": 1}],
            inputs=[
                {**TEXT, "x": 1},
                {**SELECT, "options": [{"value": "v", "label": "l", "x": 2}]},
            ],
            policy={**POLICY, "x": {}},
        ),
    ),
    (
        "longest ids and title",
        _with(MIN, out_track_id=ALL_TRACK_CHARS[:64], title="题" * 128),
    ),
    ("track id with dots and colons", _with(MIN, out_track_id=".:a..")),
    ("track id of one colon", _with(MIN, out_track_id=":")),
    (
        "30 fields, value and sensitive optional",
        _with(MIN, fields=[{"label": "l" * 64} for _ in range(29)] + [{"label": "x", "value": ""}]),
    ),
    (
        "longest field value, sensitive",
        _with(MIN, fields=[{"label": "手机", "value": "9" * 1000, "sensitive": True}]),
    ),
    ("longest body, three bytes a character", _with(MIN, body_md="审" * 8000)),
    ("status without color", _with(MIN, status={"text": "s" * 32})),
    (
        "8 actions, longest ids and labels, every style",
        _with(
            MIN,
            actions=[
                {
                    "id": (ALL_ID_CHARS + str(i))[-32:],
                    "label": "签" * 16,
                    "decision": ("approve", "reject")[i % 2],
                    **({"style": ("default", "primary", "danger")[i % 3]} if i < 7 else {}),
                }
                for i in range(8)
            ],
        ),
    ),
    (
        "8 inputs at their limits; foreign keys ignored per type",
        _with(
            DECIDING,
            inputs=[
                {"id": "t1", "type": "text", "label": "l" * 32, "max_len": 1},
                {"id": "t2", "type": "text", "label": "l", "max_len": 2000},
                {"id": "t3", "type": "text", "label": "l", "options": "ignored"},
                {"id": "t4", "type": "text", "label": "l", "required_for": ["approve"] * 8},
                {
                    "id": "s1",
                    "type": "select",
                    "label": "l",
                    "options": [{"value": f"{i:064d}", "label": "选" * 64} for i in range(50)],
                },
                {**SELECT, "id": "s2", "max_len": "ignored"},
                {**SELECT, "id": "s3", "required_for": ["reject", "approve"]},
                {"id": "x" * 32, "type": "text", "label": "l", "required_for": []},
            ],
        ),
    ),
    (
        "sequential policy with 100 longest actors",
        _with(DECIDING, policy={"type": "sequential", "actors": MAX_ACTORS}),
    ),
    (
        "all-of policy, escalation at due_at 0, urgent",
        _with(
            DECIDING,
            policy={"type": "all", "actors": ["li"]},
            due_at=0,
            escalate_to="boss@gov.cn",
            urgent=True,
        ),
    ),
    ("largest due_at", _with(MIN, due_at=2**53 - 1, urgent=False)),
    ("escalation without a policy", _with(MIN, due_at=1, escalate_to="a")),
]

WORKED = _worked_example()

# Each breaks exactly one rule JSON Schema can express; the path parse_card names.
INVALID: list[tuple[str, Any, str]] = [
    ("not an object", [MIN], "card"),
    ("out_track_id missing", _without(MIN, "out_track_id"), "card.out_track_id"),
    ("out_track_id empty", _with(MIN, out_track_id=""), "card.out_track_id"),
    ("out_track_id 65 chars", _with(MIN, out_track_id="a" * 65), "card.out_track_id"),
    ("out_track_id only dots", _with(MIN, out_track_id="..."), "card.out_track_id"),
    ("out_track_id with a slash", _with(MIN, out_track_id="a/b"), "card.out_track_id"),
    ("out_track_id ends in a newline", _with(MIN, out_track_id="ab\n"), "card.out_track_id"),
    ("out_track_id a number", _with(MIN, out_track_id=42), "card.out_track_id"),
    ("title missing", _without(WORKED, "title"), "card.title"),
    ("title empty", _with(MIN, title=""), "card.title"),
    ("title 129 chars", _with(MIN, title="题" * 129), "card.title"),
    ("fields null", _with(MIN, fields=None), "card.fields"),
    ("31 fields", _with(MIN, fields=[{"label": "l"}] * 31), "card.fields"),
    ("field without label", _with(MIN, fields=[{"value": "v"}]), "card.fields[0].label"),
    (
        "field value 1001 chars",
        _with(MIN, fields=[{"label": "l", "value": "v" * 1001}]),
        "card.fields[0].value",
    ),
    (
        "field sensitive a string",
        _with(MIN, fields=[{"label": "l", "sensitive": "yes"}]),
        "card.fields[0].sensitive",
    ),
    ("body_md 8001 chars", _with(MIN, body_md="b" * 8001), "card.body_md"),
    ("body_md null", _with(MIN, body_md=None), "card.body_md"),
    ("status a string", _with(MIN, status="ok"), "card.status"),
    ("status without text", _with(MIN, status={"color": "red"}), "card.status.text"),
    (
        "status color purple",
        _with(MIN, status={"text": "s", "color": "purple"}),
        "card.status.color",
    ),
    ("9 actions", _with(MIN, actions=[APPROVE] * 9), "card.actions"),
    (
        "action id upper case",
        _with(MIN, actions=[{**APPROVE, "id": "Approve"}]),
        "card.actions[0].id",
    ),
    (
        "action id ends in a newline",
        _with(MIN, actions=[{**APPROVE, "id": "approve\n"}]),
        "card.actions[0].id",
    ),
    ("action id 33 chars", _with(MIN, actions=[{**APPROVE, "id": "a" * 33}]), "card.actions[0].id"),
    (
        "action label 17 chars",
        _with(MIN, actions=[{**APPROVE, "label": "签" * 17}]),
        "card.actions[0].label",
    ),
    (
        "action decision missing",
        _with(WORKED, actions=[APPROVE, _without(REJECT, "decision")]),
        "card.actions[1].decision",
    ),
    (
        "action decision maybe",
        _with(MIN, actions=[{**APPROVE, "decision": "maybe"}]),
        "card.actions[0].decision",
    ),
    (
        "action style warning",
        _with(MIN, actions=[{**APPROVE, "style": "warning"}]),
        "card.actions[0].style",
    ),
    (
        "9 inputs",
        _with(MIN, inputs=[{**TEXT, "id": f"i{i}"} for i in range(9)]),
        "card.inputs",
    ),
    ("input id with a dot", _with(MIN, inputs=[{**TEXT, "id": "a.b"}]), "card.inputs[0].id"),
    ("input type number", _with(MIN, inputs=[{**TEXT, "type": "number"}]), "card.inputs[0].type"),
    (
        "input label 33 chars",
        _with(MIN, inputs=[{**TEXT, "label": "l" * 33}]),
        "card.inputs[0].label",
    ),
    ("text max_len 0", _with(MIN, inputs=[{**TEXT, "max_len": 0}]), "card.inputs[0].max_len"),
    ("text max_len 2001", _with(MIN, inputs=[{**TEXT, "max_len": 2001}]), "card.inputs[0].max_len"),
    (
        "text max_len a string",
        _with(MIN, inputs=[{**TEXT, "max_len": "5"}]),
        "card.inputs[0].max_len",
    ),
    ("text max_len true", _with(MIN, inputs=[{**TEXT, "max_len": True}]), "card.inputs[0].max_len"),
    (
        "select without options",
        _with(MIN, inputs=[_without(SELECT, "options")]),
        "card.inputs[0].options",
    ),
    (
        "select with no options",
        _with(MIN, inputs=[{**SELECT, "options": []}]),
        "card.inputs[0].options",
    ),
    (
        "select with 51 options",
        _with(MIN, inputs=[{**SELECT, "options": [{"value": "v", "label": "l"}] * 51}]),
        "card.inputs[0].options",
    ),
    (
        "option value empty",
        _with(MIN, inputs=[{**SELECT, "options": [{"value": "", "label": "l"}]}]),
        "card.inputs[0].options[0].value",
    ),
    (
        "option label 65 chars",
        _with(MIN, inputs=[{**SELECT, "options": [{"value": "v", "label": "l" * 65}]}]),
        "card.inputs[0].options[0].label",
    ),
    (
        "required_for a string",
        _with(DECIDING, inputs=[{**TEXT, "required_for": "approve"}]),
        "card.inputs[0].required_for",
    ),
    (
        "required_for 9 entries",
        _with(DECIDING, inputs=[{**TEXT, "required_for": ["approve"] * 9}]),
        "card.inputs[0].required_for",
    ),
    ("policy a list", _with(DECIDING, policy=["li"]), "card.policy"),
    (
        "policy type majority",
        _with(DECIDING, policy={"type": "majority", "actors": ["li"]}),
        "card.policy.type",
    ),
    (
        "policy without actors",
        _with(DECIDING, policy={"type": "any"}),
        "card.policy.actors",
    ),
    (
        "policy with no actors",
        _with(DECIDING, policy={"type": "any", "actors": []}),
        "card.policy.actors",
    ),
    (
        "policy with 101 actors",
        _with(DECIDING, policy={"type": "all", "actors": [*MAX_ACTORS, "one-more"]}),
        "card.policy.actors",
    ),
    (
        "policy actor repeated",
        _with(DECIDING, policy={"type": "all", "actors": ["li", "wang", "li"]}),
        "card.policy.actors",
    ),
    (
        "policy actor not a user id",
        _with(DECIDING, policy={"type": "any", "actors": ["li", "王"]}),
        "card.policy.actors[1]",
    ),
    ("policy without actions", _with(MIN, policy=POLICY), "card.actions"),
    ("policy with empty actions", _with(MIN, policy=POLICY, actions=[]), "card.actions"),
    ("due_at negative", _with(MIN, due_at=-1), "card.due_at"),
    ("due_at 2^53", _with(MIN, due_at=2**53), "card.due_at"),
    ("due_at a string", _with(MIN, due_at="1764400000000"), "card.due_at"),
    ("due_at true", _with(MIN, due_at=True), "card.due_at"),
    ("due_at with a fraction", _with(MIN, due_at=1.5), "card.due_at"),
    ("escalate_to without due_at", _with(MIN, escalate_to="boss"), "card.escalate_to"),
    (
        "escalate_to with a null due_at",
        _with(MIN, escalate_to="boss", due_at=None),
        "card.escalate_to",
    ),
    ("escalate_to not a user id", _with(MIN, escalate_to="a b", due_at=1), "card.escalate_to"),
    ("escalate_to a list", _with(MIN, escalate_to=["boss"], due_at=1), "card.escalate_to"),
    ("urgent a string", _with(MIN, urgent="yes"), "card.urgent"),
    ("urgent null", _with(MIN, urgent=None), "card.urgent"),
]

# The rules in the schema's $comment: the schema accepts, the server refuses.
BEYOND_SCHEMA: list[tuple[str, dict[str, Any], str]] = [
    (
        "action ids repeated",
        _with(MIN, actions=[APPROVE, {**REJECT, "id": "approve"}]),
        "card.actions[1].id",
    ),
    (
        "input ids repeated",
        _with(MIN, inputs=[TEXT, {**SELECT, "id": "comment"}]),
        "card.inputs[1].id",
    ),
    (
        "required_for names no action",
        _with(DECIDING, inputs=[{**TEXT, "required_for": ["approve", "escalate"]}]),
        "card.inputs[0].required_for[1]",
    ),
    (
        "over 32 KiB as JSON",
        _with(MIN, fields=[{"label": "l", "value": "值" * 1000} for _ in range(11)]),
        "card",
    ),
    ("due_at written as a float", _with(MIN, due_at=1764400000000.0), "card.due_at"),
    (
        "max_len written as a float",
        _with(MIN, inputs=[{**TEXT, "max_len": 500.0}]),
        "card.inputs[0].max_len",
    ),
]


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_worked_example_is_extracted_from_the_docs() -> None:
    assert WORKED["out_track_id"] == "leave-2026-0042"
    assert {a["id"] for a in WORKED["actions"]} == {"approve", "reject"}


@pytest.mark.parametrize("card", [c for _, c in VALID], ids=[n for n, _ in VALID])
def test_valid_cards_pass_both(card: dict[str, Any]) -> None:
    assert _server_field(card) is None
    assert list(VALIDATOR.iter_errors(card)) == []


@pytest.mark.parametrize(
    ("card", "field"), [(c, f) for _, c, f in INVALID], ids=[n for n, _, _ in INVALID]
)
def test_invalid_cards_fail_both(card: Any, field: str) -> None:
    assert _server_field(card) == field
    assert not _schema_accepts(card)


@pytest.mark.parametrize(
    ("card", "field"), [(c, f) for _, c, f in BEYOND_SCHEMA], ids=[n for n, _, _ in BEYOND_SCHEMA]
)
def test_rules_in_the_schema_comment_are_checked_by_the_server_only(
    card: dict[str, Any], field: str
) -> None:
    assert _schema_accepts(card)
    assert _server_field(card) == field


def test_unknown_keys_are_allowed_like_the_server_ignores_them() -> None:
    def objects(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            found = [node] if node.get("type") == "object" or "properties" in node else []
            return found + [o for v in node.values() for o in objects(v)]
        if isinstance(node, list):
            return [o for v in node for o in objects(v)]
        return []

    assert all(o.get("additionalProperties", True) is not False for o in objects(SCHEMA))
    assert "additionalProperties" in SCHEMA["$comment"]


def test_unhashable_required_for_entry_is_an_invalid_field() -> None:
    card = _with(DECIDING, inputs=[{**TEXT, "required_for": [["approve"]]}])
    assert not _schema_accepts(card)
    assert _server_field(card) == "card.inputs[0].required_for[0]"


# -- property: near-valid cards -------------------------------------------------

BASES = [c for _, c in VALID if len(orjson.dumps(c)) < 4096]
Path_ = tuple[str | int, ...]

OTHER_TYPES: list[Any] = [None, True, False, 0, 7, -1, 1.5, "", "x", [], {}, ["x"], {"x": 1}]
LENGTHS = [0, 1, 16, 17, 32, 33, 64, 65, 128, 129, 1000, 1001, 2000, 2001, 8000, 8001]
STRINGS = [
    # bad or borderline values
    "Approve",
    "maybe",
    "purple",
    "number",
    "majority",
    "warning",
    "a b",
    "a\n",
    "..",
    ".",
    "王",
    "a@b.c",
    "c:d",
    # valid values of other keys
    "approve",
    "reject",
    "text",
    "select",
    "any",
    "all",
    "sequential",
    "gray",
    "red",
    "default",
    "danger",
    "li",
]
NUMBERS: list[Any] = [-1, 0, 1, 500, 2000, 2001, 2**53 - 1, 2**53, 500.0]
NEW_KEYS: list[tuple[str, Any]] = [
    ("unknown_key", {"any": "thing"}),
    ("escalate_to", "boss"),
    ("due_at", 1764400000000),
    ("due_at", None),
    ("policy", {"type": "all", "actors": ["li"]}),
    ("status", {"text": "s", "color": "blue"}),
    ("urgent", True),
    ("max_len", 3),
    ("options", [{"value": "v", "label": "l"}]),
    ("sensitive", False),
    ("color", "red"),
    ("style", "danger"),
    ("required_for", ["approve"]),
]
OPS = ("drop", "retype", "stretch", "string", "number", "list", "add")


def _walk(node: Any, prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    out: list[tuple[Path_, Any]] = [(prefix, node)]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _walk(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, (*prefix, i))
    return out


def _set(doc: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def _mutate(draw: st.DrawFn, doc: Any) -> Any:
    op = draw(st.sampled_from(OPS))
    nodes = _walk(doc)
    if op == "drop":
        keyed = [p for p, _ in nodes if p and isinstance(p[-1], str)]
        if keyed:
            path = draw(st.sampled_from(keyed))
            parent = doc
            for step in path[:-1]:
                parent = parent[step]
            del parent[path[-1]]
        return doc
    if op == "retype":
        path = draw(st.sampled_from([p for p, _ in nodes]))
        return _set(doc, path, copy.deepcopy(draw(st.sampled_from(OTHER_TYPES))))
    if op in ("stretch", "string"):
        strings = [p for p, v in nodes if isinstance(v, str)]
        if not strings:
            return doc
        path = draw(st.sampled_from(strings))
        if op == "stretch":
            value = draw(st.sampled_from(["a", "A", "审", "."])) * draw(st.sampled_from(LENGTHS))
        else:
            value = draw(st.sampled_from(STRINGS))
        return _set(doc, path, value)
    if op == "number":
        path = draw(st.sampled_from([p for p, _ in nodes]))
        return _set(doc, path, draw(st.sampled_from(NUMBERS)))
    if op == "list":
        lists = [(p, v) for p, v in nodes if isinstance(v, list)]
        if not lists:
            return doc
        path, items = draw(st.sampled_from(lists))
        how = draw(st.sampled_from(("empty", "repeat", "grow")))
        if how == "empty" or not items:
            return _set(doc, path, [])
        if how == "repeat":
            return _set(doc, path, [*items, copy.deepcopy(draw(st.sampled_from(items)))])
        size = draw(st.sampled_from([8, 9, 30, 31, 50, 51, 100, 101]))
        grown = list(items)
        for k in range(len(items), size):
            item = copy.deepcopy(items[k % len(items)])
            if isinstance(item, str):
                item = f"u{k}"
            elif isinstance(item, dict) and isinstance(item.get("id"), str):
                item["id"] = f"{item['id'][:28]}{k}"
            grown.append(item)
        return _set(doc, path, grown)
    # add a key (known somewhere, or unknown) to some object
    objects = [p for p, v in nodes if isinstance(v, dict)]
    if objects:
        path = draw(st.sampled_from(objects))
        key, value = draw(st.sampled_from(NEW_KEYS))
        target = doc
        for step in path:
            target = target[step]
        target[key] = copy.deepcopy(value)
    return doc


@st.composite
def near_valid_cards(draw: st.DrawFn) -> Any:
    doc: Any = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        doc = _mutate(draw, doc)
    return doc


def _ids(items: Any) -> list[Any]:
    if not isinstance(items, list):
        return []
    return [x.get("id") for x in items if isinstance(x, dict)]


def _breaks_a_rule_beyond_the_schema(card: Any) -> bool:
    """Whether ``card`` breaks one of the rules listed in the schema's $comment."""
    if not isinstance(card, dict):
        return False
    action_ids = _ids(card.get("actions"))
    input_ids = _ids(card.get("inputs"))
    if any(action_ids.count(i) > 1 for i in action_ids if i is not None):
        return True
    if any(input_ids.count(i) > 1 for i in input_ids if i is not None):
        return True
    inputs = card.get("inputs")
    for d in inputs if isinstance(inputs, list) else []:
        if not isinstance(d, dict):
            continue
        refs = d.get("required_for")
        if isinstance(refs, list) and any(ref not in action_ids for ref in refs):
            return True
        if isinstance(d.get("max_len"), float) and d["max_len"].is_integer():
            return True
    if isinstance(card.get("due_at"), float) and card["due_at"].is_integer():
        return True
    # Normalising adds well under 2 KiB of defaults to a card of this shape.
    return len(orjson.dumps(card)) > LIMITS.max_card_bytes - 2048


@settings(max_examples=200, deadline=None)
@given(near_valid_cards())
def test_schema_and_server_agree_on_near_valid_cards(card: Any) -> None:
    server, schema = _server_accepts(card), _schema_accepts(card)
    if server:
        assert schema, "the schema is stricter than the server"
    if not _breaks_a_rule_beyond_the_schema(card):
        assert schema == server, f"schema {schema}, server field {_server_field(card)!r}"


def test_the_packaged_schema_is_the_documented_one() -> None:
    """/openapi.json serves the copy shipped in the package (imserver/http/); authors read
    docs/card.schema.json. After editing one: cp docs/card.schema.json imserver/http/."""
    packaged = ROOT / "imserver" / "http" / "card.schema.json"
    assert packaged.read_bytes() == SCHEMA_FILE.read_bytes()
