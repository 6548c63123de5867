"""The supervision bot is pure; its per-event state and timers are kept by the runtime's store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bots.runtime import (
    BotAction,
    BotEvent,
    CardPush,
    CardUpdate,
    Effects,
    EventRejected,
    Notice,
    Timer,
    TimerFired,
    card_track_id,
    track_id,
)
from bots.runtime.effects import op_rows
from bots.runtime.store import CARD_LANE, BotStore
from bots.supervision import SupervisionBot
from imserver_sdk import CallbackAction

UNITS = [
    {"id": "nc", "name": "南昌市", "level": "city", "handlers": ["nc-h"], "leader": "nc-b"},
    {"id": "xh", "name": "新建区", "level": "county", "parent": "nc", "handlers": ["xh-h"],
     "leader": "xh-b"},
]  # fmt: skip


def task(**change: Any) -> BotEvent:
    data: dict[str, Any] = {"task_id": "DB-1", "title": "防火排查", "content": "请排查",
                            "issuer": "duban", "due_at": 1_764_400_000_000,
                            "units": UNITS}  # fmt: skip
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}  # None: leave the field out
    return BotEvent("t1", "supervision.task", data, 0.0)


def callback(action: str, otid: str, progress: str, action_id: str = "a1") -> CallbackAction:
    return CallbackAction.from_dict(
        {"type": "card.action", "app_id": "duban", "action_id": action_id, "card_id": "c_1",
         "out_track_id": otid, "version": 2, "actor": "nc-h", "action": action,
         "decision": "approve", "inputs": {"progress": progress}, "state": "approved", "at": 7}
    )  # fmt: skip


def test_a_task_becomes_a_card_per_unit_an_overview_and_a_deadline_timer() -> None:
    effects = SupervisionBot("duban").on_event(task())
    nc, xh, overview, timer = effects.cards
    assert isinstance(nc, CardPush) and isinstance(xh, CardPush)
    assert (nc.users, nc.units, nc.recursive, nc.key) == (("nc-h",), ("nc",), False, "unit:nc:1")
    assert nc.meta == {"unit": "nc", "round": 1}
    assert [a["label"] for a in nc.card["actions"]] == ["报送进展", "办结"]
    assert nc.card["escalate_to"] == "nc-b" and nc.card["due_at"] == 1_764_400_000_000
    assert {"label": "上级单位", "value": "南昌市"} in xh.card["fields"]
    assert isinstance(overview, CardPush) and overview.key is None
    assert overview.users == ("duban",) and "policy" not in overview.card
    assert [f["label"] for f in overview.card["fields"]] == ["　南昌市", "　　新建区"]
    assert overview.card["status"]["text"] == "督办中 办结0/2"
    assert timer == Timer(1_764_400_000.0, "overdue")
    assert effects.state == {"units": {"nc": {"state": "pending", "text": "", "reports": 0},
                                       "xh": {"state": "pending", "text": "", "reports": 0}},
                             "overdue": False}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"units": []}, "missing_field", "data.units"),
        ({"units": [{**UNITS[0], "level": "galaxy"}]}, "invalid_field", "data.units[0].level"),
        ({"units": [UNITS[1]]}, "invalid_field", "data.units[0].parent"),
        ({"units": [UNITS[0], UNITS[0]]}, "invalid_field", "data.units[1].id"),
        ({"units": [{**UNITS[0], "handlers": None}]}, "missing_field",
         "data.units[0].handlers"),
        ({"units": [UNITS[0]] * 29}, "invalid_field", "data.units"),
        ({"issuer": None}, "missing_field", "data.issuer"),
    ],
)  # fmt: skip
def test_bad_tasks_name_their_field(change: dict[str, Any], code: str, field: str) -> None:
    with pytest.raises(EventRejected) as e:
        SupervisionBot("duban").on_event(task(**change))
    assert (e.value.code, e.value.field) == (code, field)


def test_progress_opens_the_next_round_and_updates_the_overview() -> None:
    bot = SupervisionBot("duban")
    state = bot.on_event(task()).state
    assert state is not None
    otid = card_track_id("t1", "unit:nc:1")
    effects = bot.on_action(
        BotAction(callback("progress", otid, "完成80%"), task(), state, {"unit": "nc", "round": 1})
    )
    assert effects.forward is not None and effects.forward.body["type"] == "supervision.progress"
    assert effects.answer == CardUpdate({"status": {"text": "已报送第1次进展", "color": "blue"}})
    overview, nxt = effects.cards
    assert isinstance(overview, CardUpdate) and overview.card == track_id("t1")
    assert overview.changes["fields"][0]["value"] == "进展（第1次）：完成80%"
    assert isinstance(nxt, CardPush) and nxt.key == "unit:nc:a1"
    assert nxt.meta == {"unit": "nc", "round": 2} and "完成80%" in nxt.card["body_md"]
    assert effects.state is not None and effects.state["units"]["nc"]["state"] == "progress"
    assert state["units"]["nc"]["state"] == "pending"  # the input state is not mutated


def test_done_everywhere_turns_the_overview_green_and_the_timer_then_does_nothing() -> None:
    bot = SupervisionBot("duban")
    state = bot.on_event(task()).state
    for uid in ("nc", "xh"):
        effects = bot.on_action(
            BotAction(callback("done", card_track_id("t1", f"unit:{uid}:1"), "完成", uid),
                      task(), state or {}, {"unit": uid, "round": 1})
        )  # fmt: skip
        state = effects.state
    (overview,) = effects.cards
    assert isinstance(overview, CardUpdate)
    assert overview.changes["status"] == {"text": "全部办结 2/2", "color": "green"}
    assert bot.on_timer(TimerFired("overdue", {}, task(), state or {})) == Effects()


def test_the_deadline_dings_every_unit_not_done_and_marks_it_late() -> None:
    bot = SupervisionBot("duban")
    state = bot.on_event(task()).state or {}
    state["units"]["xh"].update(state="done", text="完成", reports=1)
    effects = bot.on_timer(TimerFired("overdue", {}, task(), state))
    ding, overview = effects.cards
    assert isinstance(ding, Notice) and ding.urgent and ding.users == ("nc-h",)
    assert ding.title == "督办催办：防火排查" and "南昌市" in ding.text
    assert isinstance(overview, CardUpdate)
    assert overview.changes["fields"][0]["value"] == "【已逾期】未报送"
    assert overview.changes["status"] == {"text": "已逾期 办结1/2", "color": "red"}
    assert effects.state is not None and effects.state["overdue"] is True


def test_the_store_keeps_state_card_meta_and_timers_across_reopening(tmp_path: Path) -> None:
    store = BotStore(tmp_path / "b.sqlite3")
    effects = SupervisionBot("duban").on_event(task(due_at=int((time.time() + 60) * 1000)))
    rows = op_rows(effects.cards, "t1", "e:t1:")
    assert store.accept_event("duban", task(), rows, hold_s=0, state=effects.state)
    store.close()
    store = BotStore(tmp_path / "b.sqlite3")
    assert store.state("duban", "t1") == effects.state
    assert store.card_owner("duban", card_track_id("t1", "unit:xh:1")) == (
        "t1", {"unit": "xh", "round": 1}
    )  # fmt: skip
    due = [i.op["op"] for i in store.due("duban", CARD_LANE)]
    assert due == ["push", "push", "push"]  # the timer waits for its time
    timer = store.item("duban", CARD_LANE, "timer:t1:overdue")
    assert timer is not None and timer.op["at"] > time.time()
    assert store.event_state("duban", "t1") == {"state": "queued"}  # timers are not delivery
    store.complete_timer(timer.id, "duban", "t1", [], {"late": True})
    assert store.state("duban", "t1") == {"late": True}
    assert store.item("duban", CARD_LANE, "timer:t1:overdue") is None
    store.close()


def test_a_newer_update_of_a_card_supersedes_a_pending_older_one(tmp_path: Path) -> None:
    """A retried aggregate update must not land after a newer one and undo it."""
    store = BotStore(tmp_path / "b.sqlite3")
    store.accept_event("duban", task(), [], hold_s=0)
    older = CardUpdate({"status": {"text": "1", "color": "blue"}}, card=track_id("t1"))
    newer = CardUpdate({"status": {"text": "2", "color": "blue"}}, card=track_id("t1"))
    other = CardUpdate({"title": "x"}, card=track_id("t1"))  # other keys: kept
    for i, op in enumerate((older, other, newer)):
        rows = op_rows((op,), "t1", f"a:a{i}:")
        store.accept_action("duban", f"a{i}", "x", None, None, ops=rows, event_id="t1")
    pending = [i.op["changes"] for i in store.due("duban", CARD_LANE)]
    assert pending == [{"title": "x"}, {"status": {"text": "2", "color": "blue"}}]
    store.close()
