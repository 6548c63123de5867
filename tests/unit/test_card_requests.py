"""The card requests (cards/requests.py) and the core's request registry
(imserver/gateway/extensions.py) they are registered through.

The card frames are the ones tests/unit/test_requests.py held before the
parsing moved into the plug-in: they must parse to the same values and fail
with the same codes and fields, through the table the gateway parses with.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cards.requests import (
    CARD_REQUEST_TYPES,
    CardAct,
    CardGet,
    Todo,
    parse_card_act,
    parse_card_get,
    parse_todo,
    read_cards_since,
)
from imserver.config import LimitsConfig
from imserver.errors import ImError, InvalidField, UnknownType
from imserver.gateway.extensions import RequestExtensions
from imserver.protocol import requests as rq
from imserver.protocol.fields import Fields
from imserver.services.caller import Caller

LIMITS = LimitsConfig()
CARD = "c_abcdefgh12"
DM = "dm:alice:bob"


async def _answer(caller: Caller, req: Any) -> dict[str, Any]:
    return {"req": req}


def card_extensions() -> RequestExtensions:
    """A registry holding the card parsers, as ``cards.ws_requests`` fills it."""
    ext = RequestExtensions()
    ext.add_request("card.act", CardAct, parse_card_act, _answer)
    ext.add_request("card.get", CardGet, parse_card_get, _answer)
    ext.add_request("todo", Todo, parse_todo, _answer)
    ext.add_sync_part(read_cards_since, _answer)
    return ext


TABLE = card_extensions().parsers()


def _parse(frame: dict[str, Any]) -> rq.Request:
    rid, req = rq.parse_request({"id": 1, **frame}, LIMITS, TABLE)
    assert rid == 1
    return req


VALID: list[tuple[dict[str, Any], rq.Request]] = [
    (
        {"type": "card.act", "card_id": CARD, "action": "approve", "action_id": "a1"},
        CardAct(CARD, "approve", "a1", {}),
    ),
    (
        {
            "type": "card.act",
            "card_id": CARD,
            "action": "reject",
            "action_id": "a2",
            "inputs": {"comment": "no"},
        },
        CardAct(CARD, "reject", "a2", {"comment": "no"}),
    ),
    (
        {"type": "card.act", "card_id": CARD, "action": "a", "action_id": "b", "inputs": None},
        CardAct(CARD, "a", "b", {}),
    ),
    ({"type": "card.get", "card_id": CARD}, CardGet(CARD)),
    ({"type": "todo"}, Todo(limit=100)),
    ({"type": "todo", "limit": 5}, Todo(limit=5)),
    ({"type": "todo", "limit": 200}, Todo(limit=200)),
    ({"type": "sync"}, rq.Sync(since={}, limit=LIMITS.sync_page_messages, parts=(0,))),
    (
        {"type": "sync", "since": {DM: 3}, "limit": 10, "cards_since": 42},
        rq.Sync(since={DM: 3}, limit=10, parts=(42,)),
    ),
]


@pytest.mark.parametrize(
    ("frame", "expected"), VALID, ids=[f"{i}-{f['type']}" for i, (f, _) in enumerate(VALID)]
)
def test_card_request_parses_to_its_dataclass(frame: dict[str, Any], expected: Any) -> None:
    req = _parse(frame)
    assert type(req) is type(expected)
    assert req == expected


def test_every_card_type_has_a_valid_example() -> None:
    assert {f["type"] for f, _ in VALID} - {"sync"} == set(CARD_REQUEST_TYPES)


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("act-no-card", {"type": "card.act", "action": "a", "action_id": "b"}, "card_id"),
    (
        "act-card-int",
        {"type": "card.act", "card_id": 5, "action": "a", "action_id": "b"},
        "card_id",
    ),
    (
        "act-not-card-id",
        {"type": "card.act", "card_id": "g:abcdefgh", "action": "a", "action_id": "b"},
        "card_id",
    ),
    (
        "act-card-short",
        {"type": "card.act", "card_id": "c_abc", "action": "a", "action_id": "b"},
        "card_id",
    ),
    (
        "act-card-long",
        {"type": "card.act", "card_id": "c_" + "a" * 63, "action": "a", "action_id": "b"},
        "card_id",
    ),
    ("act-no-action", {"type": "card.act", "card_id": CARD, "action_id": "b"}, "action"),
    (
        "act-action-long",
        {"type": "card.act", "card_id": CARD, "action": "a" * 33, "action_id": "b"},
        "action",
    ),
    ("act-no-action-id", {"type": "card.act", "card_id": CARD, "action": "a"}, "action_id"),
    (
        "act-action-id-long",
        {"type": "card.act", "card_id": CARD, "action": "a", "action_id": "b" * 65},
        "action_id",
    ),
    (
        "act-inputs-list",
        {"type": "card.act", "card_id": CARD, "action": "a", "action_id": "b", "inputs": []},
        "inputs",
    ),
    ("get-no-card", {"type": "card.get"}, "card_id"),
    ("get-card-list", {"type": "card.get", "card_id": [CARD]}, "card_id"),
    ("todo-limit-zero", {"type": "todo", "limit": 0}, "limit"),
    ("todo-limit-over", {"type": "todo", "limit": 201}, "limit"),
    ("todo-limit-bool", {"type": "todo", "limit": True}, "limit"),
    ("todo-limit-str", {"type": "todo", "limit": "5"}, "limit"),
    ("sync-cards-since-str", {"type": "sync", "cards_since": "1"}, "cards_since"),
    ("sync-cards-since-float", {"type": "sync", "cards_since": 1.5}, "cards_since"),
    # Several bad fields: the same one is named as before the parts moved out
    # (limit, then cards_since, then since).
    ("sync-limit-first", {"type": "sync", "limit": 0, "cards_since": "x", "since": []}, "limit"),
    (
        "sync-cards-since-before-since",
        {"type": "sync", "cards_since": "x", "since": []},
        "cards_since",
    ),
]


@pytest.mark.parametrize(("frame", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_card_field_names_its_path(frame: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField) as info:
        _parse(frame)
    assert info.value.code == "invalid_field"
    assert info.value.field == field


@pytest.mark.parametrize("kind", CARD_REQUEST_TYPES)
def test_card_types_are_unknown_to_the_core_alone(kind: str) -> None:
    """Only registering makes a plug-in's type known: the core's table answers unknown_type."""
    with pytest.raises(UnknownType) as info:
        rq.parse_request({"id": 1, "type": kind, "card_id": CARD}, LIMITS)
    assert info.value.code == "unknown_type"


def test_core_sync_has_no_parts_and_ignores_cards_since() -> None:
    _, req = rq.parse_request({"id": 1, "type": "sync", "cards_since": "x"}, LIMITS)
    assert req == rq.Sync(since={}, limit=LIMITS.sync_page_messages)


def test_unknown_type_is_still_unknown_with_plugins() -> None:
    with pytest.raises(UnknownType):
        _parse({"type": "card.nope"})


def test_table_is_the_core_types_plus_the_card_types() -> None:
    assert tuple(TABLE) == rq.REQUEST_TYPES + CARD_REQUEST_TYPES
    assert len(TABLE) == 29  # as many as the server answered before the move


# -- the registry -----------------------------------------------------------------------
def test_a_core_type_cannot_be_taken_over() -> None:
    ext = RequestExtensions()
    with pytest.raises(ValueError, match="'send' is already registered"):
        ext.add_request("send", CardGet, parse_card_get, _answer)
    with pytest.raises(ValueError, match="'sync' is already registered"):
        ext.add_request("sync", CardGet, parse_card_get, _answer)


def test_a_type_name_or_class_registers_once() -> None:
    ext = card_extensions()
    with pytest.raises(ValueError, match="'todo' is already registered"):
        ext.add_request("todo", Todo, parse_todo, _answer)
    with pytest.raises(ValueError, match="Todo already has a handler"):
        ext.add_request("todo2", Todo, parse_todo, _answer)


def test_registering_after_the_dispatcher_took_the_table_fails() -> None:
    ext = card_extensions()
    ext.parsers()
    with pytest.raises(RuntimeError):
        ext.add_request("card.more", CardGet, parse_card_get, _answer)
    with pytest.raises(RuntimeError):
        ext.add_sync_part(read_cards_since, _answer)


def test_handlers_are_found_by_request_class() -> None:
    ext = card_extensions()
    assert set(ext.handlers()) == {CardAct, CardGet, Todo}
    assert len(ext.sync_answers()) == 1
    assert ext.request_types() == CARD_REQUEST_TYPES


def test_sync_parts_are_read_in_registration_order() -> None:
    def read_b(f: Fields, _: LimitsConfig) -> str | None:
        return f.string("b_since", required=False, max_len=8)

    ext = card_extensions()
    ext.add_sync_part(read_b, _answer)
    _, req = rq.parse_request(
        {"id": 1, "type": "sync", "cards_since": 9, "b_since": "x"}, LIMITS, ext.parsers()
    )
    assert isinstance(req, rq.Sync) and req.parts == (9, "x")


# -- properties -------------------------------------------------------------------------
_junk = (
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2)
)
_card_fields: dict[str, st.SearchStrategy[Any]] = {
    "card_id": st.sampled_from([CARD, CARD, "c_x", "c_" + "a" * 40, "g:abcdefgh"]) | _junk,
    "action": st.sampled_from(["approve", "", "a" * 33]) | _junk,
    "action_id": st.sampled_from(["a1", "", "b" * 65]) | _junk,
    "inputs": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2) | _junk,
    "limit": _junk,
    "cards_since": _junk,
}
_frames = st.builds(
    lambda t, fields: {**fields, "type": t},
    st.sampled_from([*CARD_REQUEST_TYPES, "sync"]),
    st.fixed_dictionaries({}, optional=_card_fields),
)


@settings(max_examples=300, deadline=None)
@given(frame=_frames)
def test_random_card_frames_only_raise_im_errors_and_keep_type_promises(
    frame: dict[str, Any],
) -> None:
    try:
        req = _parse(frame)
    except ImError as e:
        assert e.code == "invalid_field"
        assert isinstance(e, InvalidField) and e.field
        return
    match req:
        case CardAct(card_id=card_id, action=action, action_id=action_id, inputs=inputs):
            assert isinstance(card_id, str) and card_id.startswith("c_")
            assert isinstance(action, str) and 1 <= len(action) <= 32
            assert isinstance(action_id, str) and 1 <= len(action_id) <= 64
            assert isinstance(inputs, dict)
        case CardGet(card_id=card_id):
            assert isinstance(card_id, str) and card_id.startswith("c_")
        case Todo(limit=limit):
            assert isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 200
        case rq.Sync(parts=(cards_since,)):
            assert isinstance(cards_since, int) and not isinstance(cards_since, bool)
        case _:  # pragma: no cover
            raise AssertionError(f"unexpected request {req!r}")
