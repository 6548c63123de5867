"""The hotline bot is pure: a case becomes a dispatch card; each step a forward and card ops."""

from __future__ import annotations

from typing import Any

import pytest

from bots.hotline import HotlineBot
from bots.runtime import (
    BotAction,
    BotEvent,
    CardPush,
    CardUpdate,
    Effects,
    EventRejected,
    card_track_id,
    track_id,
)
from bots.runtime.effects import op_rows
from imserver_sdk import CallbackAction

UNIT = {"id": "xh", "name": "新建区", "handlers": ["h1", "h2"], "leader": "boss"}
OTHER = {"id": "qs", "name": "青山湖区", "handlers": ["q1"], "leader": "qboss"}


def case(**change: Any) -> BotEvent:
    data: dict[str, Any] = {
        "case_id": "GD-1", "title": "噪音扰民", "citizen": "王女士", "phone": "13812341234",
        "content": "夜间施工", "due_at": 1_764_400_000_000, "unit": UNIT, "transfer_units": [OTHER],
    }  # fmt: skip
    data.update(change)
    return BotEvent("c1", "hotline.case", {k: v for k, v in data.items() if v is not None}, 0.0)


def callback(action: str, otid: str, decision: str = "approve", **inputs: str) -> CallbackAction:
    return CallbackAction.from_dict(
        {"type": "card.action", "app_id": "hotline", "action_id": "a1", "card_id": "c_1",
         "out_track_id": otid, "version": 2, "actor": "h1", "action": action,
         "decision": decision, "inputs": inputs, "state": "approved", "at": 5}
    )  # fmt: skip


def test_a_case_becomes_an_any_of_dispatch_card_to_the_unit_with_a_masked_phone() -> None:
    effects = HotlineBot("hotline").on_event(case())
    (push,) = effects.cards
    assert isinstance(push, CardPush) and push.key is None
    assert push.users == ("h1", "h2") and push.units == ("xh",) and push.recursive
    card = push.card
    assert card["policy"] == {"type": "any", "actors": ["h1", "h2"]}
    assert [a["label"] for a in card["actions"]] == ["签收", "转办", "退回"]
    assert {"label": "联系电话", "value": "13812341234", "sensitive": True} in card["fields"]
    assert card["due_at"] == 1_764_400_000_000 and card["escalate_to"] == "boss"
    target = next(i for i in card["inputs"] if i["id"] == "target")
    assert target["options"] == [{"value": "qs", "label": "青山湖区"}]
    assert card["status"] == {"text": "待签收", "color": "orange"}


def test_without_transfer_units_there_is_no_transfer_button() -> None:
    (push,) = HotlineBot("hotline").on_event(case(transfer_units=None)).cards
    assert isinstance(push, CardPush)
    assert [a["id"] for a in push.card["actions"]] == ["claim", "return"]
    assert [i["id"] for i in push.card["inputs"]] == ["reason"]


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"phone": None}, "missing_field", "data.phone"),
        ({"due_at": 1.5}, "invalid_field", "data.due_at"),
        ({"unit": {**UNIT, "handlers": []}}, "invalid_field", "data.unit.handlers"),
        ({"unit": {**UNIT, "leader": None}}, "missing_field", "data.unit.leader"),
        ({"transfer_units": [UNIT]}, "invalid_field", "data.transfer_units"),
        ({"transfer_units": ["qs"]}, "invalid_field", "data.transfer_units[0]"),
        ({"title": "长" * 101}, "invalid_field", "data.title"),
    ],
)
def test_bad_cases_name_their_field(change: dict[str, Any], code: str, field: str) -> None:
    with pytest.raises(EventRejected) as e:
        HotlineBot("hotline").on_event(case(**change))
    assert (e.value.code, e.value.field) == (code, field)


def test_claim_pushes_a_handling_card_to_the_claimer_and_forwards_once() -> None:
    ev = case()
    effects = HotlineBot("hotline").on_action(
        BotAction(callback("claim", track_id("c1")), ev, {}, {"role": "dispatch", "unit": "xh"})
    )
    assert isinstance(effects, Effects) and effects.forward is not None
    assert effects.forward.body == {"type": "hotline.claimed", "case_id": "GD-1", "unit": "xh",
                                    "actor": "h1", "at": 5}  # fmt: skip
    assert effects.answer == CardUpdate({"status": {"text": "已签收（h1）", "color": "blue"}})
    (handle,) = effects.cards
    assert isinstance(handle, CardPush) and handle.users == ("h1",)
    assert handle.key == "handle:a1"  # derived from the action id: a repeat pushes nothing new
    assert handle.meta == {"role": "handle", "unit": "xh", "dispatch": track_id("c1")}
    assert handle.card["policy"] == {"type": "any", "actors": ["h1"]}
    assert [a["label"] for a in handle.card["actions"]] == ["办结", "转办", "退回"]
    reply = next(i for i in handle.card["inputs"] if i["id"] == "reply")
    assert reply["required_for"] == ["close"]


def test_close_on_the_handling_card_also_updates_the_dispatch_card() -> None:
    meta = {"role": "handle", "unit": "xh", "dispatch": track_id("c1")}
    otid = card_track_id("c1", "handle:a0")
    effects = HotlineBot("hotline").on_action(
        BotAction(callback("close", otid, reply="已处理"), case(), {}, meta)
    )
    assert isinstance(effects, Effects) and effects.forward is not None
    assert effects.forward.body["type"] == "hotline.closed"
    assert effects.forward.body["reply"] == "已处理"
    done = {"status": {"text": "已办结（h1）", "color": "green"}}
    assert effects.answer == CardUpdate(done)
    assert effects.cards == (CardUpdate(done, card=track_id("c1")),)


def test_transfer_dispatches_to_the_chosen_unit_with_the_rest_as_choices() -> None:
    effects = HotlineBot("hotline").on_action(
        BotAction(
            callback("transfer", track_id("c1"), "reject", target="qs", reason="管辖"),
            case(), {}, {"role": "dispatch", "unit": "xh"},
        )
    )  # fmt: skip
    assert isinstance(effects, Effects) and effects.forward is not None
    body = effects.forward.body
    assert (body["type"], body["unit"], body["to_unit"], body["reason"]) == (
        "hotline.transferred", "xh", "qs", "管辖"
    )  # fmt: skip
    (push,) = effects.cards
    assert isinstance(push, CardPush) and push.users == ("q1",) and push.units == ("qs",)
    assert push.key == "dispatch:a1" and push.meta == {"role": "dispatch", "unit": "qs"}
    target = next(i for i in push.card["inputs"] if i["id"] == "target")
    assert target["options"] == [{"value": "xh", "label": "新建区"}]  # it may go back
    assert push.card["escalate_to"] == "qboss"


def test_a_callback_for_an_unknown_card_does_nothing() -> None:
    effects = HotlineBot("hotline").on_action(BotAction(callback("claim", "foreign"), None))
    assert effects == Effects()


def test_card_ops_become_rows_keyed_by_their_cause() -> None:
    push = CardPush({"title": "t"}, users=("h1",), key="handle:a1", units=("xh",), meta={"m": 1})
    update = CardUpdate({"status": {"text": "x", "color": "gray"}}, card="ev-other")
    rows = op_rows((push, update), "c1", "a:a1:")
    assert [k for k, _ in rows] == ["a:a1:0", "a:a1:1"]
    assert rows[0][1] == {
        "event_id": "c1", "op": "push",
        "card": {"title": "t", "out_track_id": card_track_id("c1", "handle:a1")},
        "users": ["h1"], "groups": [], "units": [{"id": "xh", "recursive": True}], "meta": {"m": 1},
    }  # fmt: skip
    assert rows[1][1]["out_track_id"] == "ev-other"
    otid = card_track_id("c1", "handle:a1")
    assert otid.startswith("bk-") and len(otid) <= 64 and otid == card_track_id("c1", "handle:a1")
    assert card_track_id("c1") == track_id("c1") != card_track_id("c2", "handle:a1")
