"""Card templates and private data, the pure parts (cards/templates.py, cards/private.py).

The properties that make templates safe: a variable's value lands inside the
string that held its slot and nowhere else (no new keys, no list items, no
second expansion), a template without slots renders to itself, a card turned
into a template and rendered with its own values comes back unchanged, and a
viewer's document holds only that viewer's private entry.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cards.model import parse_card
from cards.private import check_private, for_viewer, parse_private, private_texts
from cards.templates import (
    SLOT_RE,
    check_template,
    check_variables,
    find_slots,
    render,
    render_card,
)
from imserver.config import CardsConfig
from imserver.errors import InvalidField

LIMITS = CardsConfig()
TEMPLATE: dict[str, Any] = {
    "out_track_id": "case-{{case}}",
    "title": "{{who}} 申请 {{what}}",
    "fields": [{"label": "申请人", "value": "{{who}}"}, {"label": "{{label}}", "value": "x"}],
    "body_md": "**{{what}}** {{ who }}",
    "status": {"text": "{{state}}", "color": "blue"},
    "actions": [{"id": "ok", "label": "{{button}}", "decision": "approve"}],
    "policy": {"type": "any", "actors": ["{{approver}}"]},
    "due_at": 1_900_000_000_000,
}
SLOTS = ("approver", "button", "case", "label", "state", "what", "who")

any_text = st.text(max_size=40)
no_braces = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), max_size=30
)


def shape(value: Any) -> Any:
    """The structure without the strings: keys, list lengths, non-string scalars."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return "<str>" if isinstance(value, str) else value


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


@settings(max_examples=300)
@given(st.fixed_dictionaries({name: any_text for name in SLOTS}))
def test_values_land_only_inside_their_strings(values: dict[str, str]) -> None:
    out = render(TEMPLATE, values)
    assert shape(out) == shape(TEMPLATE)  # no key, item or type came from a value
    for before, after in zip(strings(TEMPLATE), strings(out), strict=True):
        expected, rest = "", before
        while (m := SLOT_RE.search(rest)) is not None:  # one pass, left to right
            expected += rest[: m.start()] + values[m.group(1)]
            rest = rest[m.end() :]
        assert after == expected + rest
    assert out["fields"][0]["value"] == values["who"]  # a value that looks like a slot stays text


@given(any_text, any_text)
def test_a_value_holding_a_slot_is_not_expanded_again(a: str, b: str) -> None:
    out = render({"t": "{{a}}|{{b}}"}, {"a": "{{b}}" + a, "b": b})
    assert out == {"t": "{{b}}" + a + "|" + b}


@given(
    st.recursive(
        no_braces | st.integers() | st.booleans(),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(no_braces, kids, max_size=3),
        max_leaves=12,
    )
)
def test_a_template_without_slots_renders_to_itself(value: Any) -> None:
    assert find_slots(value) == ()
    assert render(value, {}) == value


@settings(max_examples=200)
@given(
    title=no_braces.filter(lambda s: 1 <= len(s) <= 128),
    who=no_braces.filter(lambda s: len(s) <= 1000),
    body=no_braces,
)
def test_a_card_made_a_template_renders_back_to_itself(title: str, who: str, body: str) -> None:
    card = {
        "out_track_id": "c-1",
        "title": title,
        "fields": [{"label": "申请人", "value": who}],
        "body_md": body,
    }
    template = copy.deepcopy(card)
    template["title"], template["fields"][0]["value"], template["body_md"] = (
        "{{t}}",
        "{{w}}",
        "{{b}}",
    )
    _, slots = check_template(template, LIMITS)
    assert slots == ("b", "t", "w")
    assert render_card(template, slots, {"t": title, "w": who, "b": body}, LIMITS) == parse_card(
        card, LIMITS
    )


def test_registration_renders_with_samples_and_names_the_path() -> None:
    template, slots = check_template(TEMPLATE, LIMITS)
    assert (template, slots) == (TEMPLATE, SLOTS)
    cases = [
        ({**TEMPLATE, "{{k}}": "v"}, "template.{{k}}"),
        ({**TEMPLATE, "fields": [{"label": "a", "{{k}}x": "v"}]}, "template.fields[0].{{k}}x"),
        ({**TEMPLATE, "title": "{{ not-a-name }}"}, "template.title"),
        ({**TEMPLATE, "title": "{{a}} }}"}, "template.title"),
        ({**TEMPLATE, "status": {"text": "x", "color": "{{c}}"}}, "template.status.color"),
        (
            {**TEMPLATE, "actions": [{**TEMPLATE["actions"][0], "decision": "{{d}}"}]},
            "template.actions[0].decision",
        ),
        ({**TEMPLATE, "due_at": "{{due}}"}, "template.due_at"),
        ({**TEMPLATE, "body_md": "长" * 11_000}, "template"),
        ({**TEMPLATE, "body_md": "".join(f"{{{{v{i}}}}}" for i in range(65))}, "template"),
        ("{{card}}", "template"),
    ]
    for value, path in cases:
        with pytest.raises(InvalidField) as info:
            check_template(value, LIMITS)
        assert info.value.field == path, (path, info.value)


def test_two_actor_slots_are_not_taken_for_one_repeated_actor() -> None:
    two = {**TEMPLATE, "policy": {"type": "all", "actors": ["{{a}}", "{{b}}"]}}
    assert check_template(two, LIMITS)[1] == ("a", "b", *[s for s in SLOTS if s != "approver"])


def test_variables_must_match_the_slots_exactly() -> None:
    good = {name: "v" for name in SLOTS}
    assert check_variables(good, SLOTS) == good
    cases = [
        ({k: v for k, v in good.items() if k != "who"}, "variables.who"),
        ({**good, "extra": "x"}, "variables.extra"),
        ({**good, "who": 1}, "variables.who"),
        ({**good, "who": None}, "variables.who"),
        ({**good, "who": "x" * 8001}, "variables.who"),
        (["who"], "variables"),
    ]
    for value, path in cases:
        with pytest.raises(InvalidField) as info:
            check_variables(value, SLOTS)
        assert info.value.field == path


def test_the_rendered_card_passes_parse_card_like_a_direct_push() -> None:
    values = {name: "v" for name in SLOTS} | {"approver": "li", "case": "42"}
    doc = render_card(TEMPLATE, SLOTS, values, LIMITS)
    assert doc["title"] == "v 申请 v" and doc["policy"]["actors"] == ["li"]
    for name, value, path in [
        ("who", "x" * 200, "card.title"),
        ("button", "x" * 17, "card.actions[0].label"),
        ("approver", "two words", "card.policy.actors[0]"),
        ("state", "", "card.status.text"),
        ("case", "a b", "card.out_track_id"),
    ]:
        with pytest.raises(InvalidField) as info:
            render_card(TEMPLATE, SLOTS, {**values, name: value}, LIMITS)
        assert info.value.field == path, (name, info.value)
    # Each string within its limit, the card as a whole over cards.max_card_bytes.
    wide = {"out_track_id": "w", "title": "t", "body_md": "{{b}}"}
    wide["fields"] = [{"label": f"l{i}", "value": "{{v}}"} for i in range(4)]
    _, slots = check_template(wide, LIMITS)
    with pytest.raises(InvalidField) as info:
        render_card(wide, slots, {"b": "长" * 8000, "v": "长" * 1000}, LIMITS)
    assert info.value.field == "card" and "bytes as JSON" in str(info.value)


# -- private data ----------------------------------------------------------------------
DOC = parse_card(
    {
        "out_track_id": "p-1",
        "title": "t",
        "fields": [
            {"label": "申请人", "value": "张三"},
            {"label": "手机", "value": "13812341234", "sensitive": True},
        ],
        "status": {"text": "待办", "color": "gray"},
    },
    LIMITS,
)
users = st.sampled_from(["li", "wang", "zhao", "a.b", "u-9"])
entries = st.fixed_dictionaries(
    {},
    optional={
        "fields": st.lists(
            st.fixed_dictionaries(
                {
                    "label": st.sampled_from(["申请人", "额度", "备注"]),
                    "value": st.text(max_size=20),
                }
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda f: f["label"],
        ),
        "status": st.fixed_dictionaries({"text": st.text(min_size=1, max_size=32)}),
    },
).filter(bool)


@settings(max_examples=300)
@given(st.dictionaries(users, entries, max_size=5), users)
def test_a_viewer_sees_only_their_own_private_entry(private: dict[str, Any], viewer: str) -> None:
    checked = parse_private(private, DOC, LIMITS)
    doc = {**DOC, "private": checked}
    mine = for_viewer(doc, viewer)
    assert "private" not in mine and "private" not in for_viewer(doc, None)
    own = checked.get(viewer, {})
    own_values = {f["label"]: f["value"] for f in own.get("fields", [])}
    for f in mine["fields"]:
        base = next((b for b in DOC["fields"] if b["label"] == f["label"]), None)
        if f["label"] in own_values:
            assert f["value"] == own_values[f["label"]]
        else:
            assert base is not None and f == base  # nobody else's value
    assert mine["status"] == own.get("status", DOC["status"])
    assert for_viewer(doc, None) == DOC
    parse_card(mine, LIMITS)  # every viewer's card is a valid card
    assert set(private_texts(checked)) <= set(strings(checked))


def test_private_updates_replace_or_remove_per_user_and_refuse_bad_entries() -> None:
    current = parse_private(
        {"li": {"status": {"text": "a"}}, "wang": {"status": {"text": "b"}}}, DOC, LIMITS
    )
    after = parse_private(
        {"li": None, "zhao": {"status": {"text": "c"}}}, DOC, LIMITS, current=current
    )
    assert after == {
        "wang": {"status": {"text": "b", "color": "gray"}},
        "zhao": {"status": {"text": "c", "color": "gray"}},
    }
    cases = [
        ({"not a user": {"status": {"text": "x"}}}, "private.not a user"),
        ({"li": {}}, "private.li"),
        ({"li": {"title": "x"}}, "private.li.title"),
        ({"li": {"fields": []}}, "private.li.fields"),
        ({"li": {"fields": [{"label": "手机", "value": "1"}]}}, "private.li.fields[0].label"),
        (
            {"li": {"fields": [{"label": "a", "value": "1", "sensitive": False}]}},
            "private.li.fields[0].sensitive",
        ),
        (
            {"li": {"fields": [{"label": "a", "value": "1"}, {"label": "a", "value": "2"}]}},
            "private.li.fields[1].label",
        ),
        ({"li": {"status": {"text": "x", "color": "pink"}}}, "private.li.status.color"),
        (
            {"li": {"fields": [{"label": f"f{i}", "value": "v"} for i in range(29)]}},
            "private.li.fields",
        ),
        (
            {"li": {"fields": [{"label": f"f{i}", "value": "v" * 1000} for i in range(5)]}},
            "private.li",
        ),
        ([], "private"),
    ]
    for value, path in cases:
        with pytest.raises(InvalidField) as info:
            parse_private(value, DOC, LIMITS)
        assert info.value.field == path, (path, info.value)


def test_all_private_data_together_has_a_size_limit() -> None:
    entry = {"fields": [{"label": "备注", "value": "长" * 1000}]}
    many = {f"u{i}": entry for i in range(100)}
    assert len(orjson.dumps(many)) > 262_144
    with pytest.raises(InvalidField) as info:
        check_private(many, DOC, LIMITS)
    assert info.value.field == "private"
