"""The OA bot is pure: events become card pushes, callbacks become OA decisions."""

from __future__ import annotations

from typing import Any

import pytest

from bots.demo.oa_system import leave_request
from bots.oa import OABot
from bots.runtime import BotAction, BotEvent, BusinessCall, CardPush, CardUpdate, EventRejected
from imserver_sdk import CallbackAction


def event(doc: dict[str, Any]) -> BotEvent:
    return BotEvent(doc["event_id"], doc["type"], doc["data"], 0.0)


def callback(actor: str, state: str, decision: str = "approve", **inputs: str) -> CallbackAction:
    return CallbackAction.from_dict(
        {"type": "card.action", "app_id": "oa", "action_id": "a1", "card_id": "c_1",
         "out_track_id": "ev-e1", "version": 2, "actor": actor, "action": decision,
         "decision": decision, "inputs": inputs, "state": state, "at": 1}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "policy"), [("chain", "sequential"), ("countersign", "all"), ("any_leader", "any")]
)
def test_each_mode_becomes_its_policy_with_zh_cn_buttons(mode: str, policy: str) -> None:
    push = OABot("oa").on_event(event(leave_request("e1", ["li", "wang"], mode=mode, cc=["zhao"])))
    assert isinstance(push, CardPush)
    card = push.card
    assert card["policy"] == {"type": policy, "actors": ["li", "wang"]}
    assert push.users == ("li", "wang", "zhao")  # cc'd people hold the card, cannot act
    assert [a["label"] for a in card["actions"]] == ["同意", "驳回"]
    assert card["inputs"][0]["required_for"] == ["reject"]
    assert card["title"] == "请假审批：张三请假 3 天" and card["status"]["text"] == "待审批"
    assert {"label": "申请人", "value": "张三"} in card["fields"]
    assert "out_track_id" not in card  # the runtime derives it from the event id


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"approvers": None}, "missing_field", "data.approvers"),
        ({"approvers": ["li", "li"]}, "invalid_field", "data.approvers"),
        ({"approvers": ["li", 7]}, "invalid_field", "data.approvers[1]"),
        ({"kind": "party"}, "invalid_field", "data.kind"),
        ({"title": "长" * 101}, "invalid_field", "data.title"),
        ({"due_at": "tomorrow"}, "invalid_field", "data.due_at"),
        ({"fields": [{"label": "x"}]}, "missing_field", "data.fields[0].value"),
    ],
)
def test_bad_requests_are_rejected_with_a_code_and_the_field(
    change: dict[str, Any], code: str, field: str
) -> None:
    doc = leave_request("e1", ["li"])
    doc["data"].update(change)
    doc["data"] = {k: v for k, v in doc["data"].items() if v is not None}
    with pytest.raises(EventRejected) as e:
        OABot("oa").on_event(event(doc))
    assert (e.value.code, e.value.field, e.value.status) == (code, field, 400)


def test_unknown_event_type_and_withdrawal() -> None:
    with pytest.raises(EventRejected) as e:
        OABot("oa").on_event(BotEvent("e2", "oa.other", {}, 0.0))
    assert e.value.code == "unknown_event_type"
    update = OABot("oa").on_event(BotEvent("e3", "oa.withdrawn", {"request_event_id": "e1"}, 0.0))
    assert isinstance(update, CardUpdate) and update.event_id == "e1"
    assert update.changes["state"] == "closed"


def test_a_decision_is_forwarded_with_the_comment_and_a_status_line() -> None:
    origin = event(leave_request("e1", ["li", "wang"], mode="chain"))
    bot = OABot("oa")
    call, update = bot.on_action(BotAction(callback("li", "open"), origin))
    assert isinstance(call, BusinessCall) and update is not None
    assert call.body["request_id"] == "OA-e1" and call.body["final"] is False
    assert update.changes["status"] == {"text": "li已同意，待wang审批", "color": "blue"}
    call, update = bot.on_action(
        BotAction(callback("wang", "rejected", "reject", comment="材料不全"), origin)
    )
    assert call is not None and update is not None
    assert (call.body["decision"], call.body["comment"], call.body["final"]) == (
        "reject",
        "材料不全",
        True,
    )
    assert update.changes["status"] == {"text": "已驳回（wang）", "color": "red"}


def test_a_long_user_id_is_left_out_of_the_status_line_rather_than_cut() -> None:
    """A status line holds 32 characters; a cut id would name somebody else."""
    long_a, long_b = "zhang.sanfeng.county-office-01", "li.si.township-office-000042"
    origin = event(leave_request("e1", [long_a, long_b], mode="chain"))
    bot = OABot("oa")
    _, update = bot.on_action(BotAction(callback(long_a, "open"), origin))
    assert update is not None
    assert update.changes["status"] == {"text": f"待{long_b}审批", "color": "blue"}
    _, update = bot.on_action(BotAction(callback(long_b, "approved"), origin))
    assert update is not None and update.changes["status"]["text"] == "已同意"
    origin = event(leave_request("e2", [long_b, "x" * 40, long_a], mode="chain"))
    _, update = bot.on_action(BotAction(callback(long_b, "open"), origin))
    assert update is not None and update.changes["status"]["text"] == f"{long_b}已同意"
    _, update = bot.on_action(BotAction(callback("x" * 40, "open"), origin))
    assert update is not None and update.changes["status"]["text"] == "审批中"


def test_a_callback_for_an_unknown_card_is_still_forwarded() -> None:
    call, _ = OABot("oa").on_action(BotAction(callback("li", "approved"), None))
    assert call is not None and call.body["request_id"] is None and call.body["state"] == "approved"
