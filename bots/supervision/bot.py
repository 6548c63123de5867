"""督查督办 bot: a task → a sub-task card per unit + the issuer's live aggregate card.

* ``supervision.task`` → a sub-task card to each unit's handlers (reaching
  the unit's own members), the aggregate card to the issuer
  (``ev-<event_id>``), and a timer at the deadline.
* 报送进展 → forwarded as ``supervision.progress``; the unit gets a fresh card
  for its next report (a card decides once) and the aggregate is updated.
* 办结 → ``supervision.done``; the aggregate is updated.
* The deadline passes with units not done → each such unit's handlers get a
  DING (urgent notice they must confirm) and the aggregate marks them 已逾期;
  the server also escalates each open sub-task card to the unit's leader.

The units' states live in the event's bot state (stored by the runtime in
the same transaction as the forward), so the aggregate survives restarts.
"""

from __future__ import annotations

import copy
from typing import Any

from bots.runtime import (
    Bot,
    BotAction,
    BotEvent,
    BusinessCall,
    CardPush,
    CardUpdate,
    Effects,
    EventRejected,
    Notice,
    Timer,
    TimerFired,
    card_track_id,
)
from bots.supervision.task import (
    aggregate_card,
    aggregate_changes,
    initial_state,
    parse_task,
    sub_task_card,
)


class SupervisionBot(Bot):
    """督办 tasks → sub-task cards and an aggregate card; reports → the 督办 system."""

    def on_event(self, event: BotEvent) -> Effects:
        if event.type != "supervision.task":
            raise EventRejected("unknown_event_type", f"no such event type {event.type!r}", "type")
        task = parse_task(event.data)
        state = initial_state(task)
        # The units' cards first: a unit the server refuses (unknown, out of
        # scope) is then most often found before anyone holds anything.
        cards: list[CardPush | Timer] = []
        for u in task.units:
            cards.append(
                CardPush(
                    sub_task_card(task, u, 1),
                    users=u.handlers,
                    units=(u.id,),
                    recursive=False,  # the unit's own members; sub-units have their own card
                    key=f"unit:{u.id}:1",
                    meta={"unit": u.id, "round": 1},
                )
            )
        cards.append(CardPush(aggregate_card(task, state), users=(task.issuer,)))
        cards.append(Timer(task.due_at / 1000, "overdue"))
        return Effects(cards=tuple(cards), state=state)

    def on_action(self, action: BotAction) -> Effects:
        cb = action.callback
        if action.event is None or "unit" not in action.meta:
            return Effects()  # the aggregate card has no actions; nothing else is ours
        task = parse_task(action.event.data)
        unit = task.unit(action.meta["unit"])
        round_no = int(action.meta.get("round", 1))
        state = copy.deepcopy(action.state) or initial_state(task)
        progress = cb.inputs.get("progress", "")
        done = cb.action == "done"
        entry = state["units"][unit.id]
        entry.update(state="done" if done else "progress", text=progress, reports=round_no)
        body: dict[str, Any] = {
            "type": "supervision.done" if done else "supervision.progress",
            "task_id": task.task_id,
            "unit": unit.id,
            "actor": cb.actor,
            "progress": progress,
            "report": round_no,
            "at": cb.at,
        }
        aggregate = CardUpdate(
            aggregate_changes(task, state), card=card_track_id(action.event.event_id)
        )
        cards: list[CardPush | CardUpdate] = [aggregate]
        if done:
            status = {"text": f"已办结（{cb.actor}）"[:32], "color": "green"}
        else:
            status = {"text": f"已报送第{round_no}次进展"[:32], "color": "blue"}
            cards.append(
                CardPush(
                    sub_task_card(task, unit, round_no + 1, last=progress),
                    users=unit.handlers,
                    key=f"unit:{unit.id}:{cb.action_id}",
                    meta={"unit": unit.id, "round": round_no + 1},
                )
            )
        return Effects(
            forward=BusinessCall(body),
            answer=CardUpdate({"status": status}),
            cards=tuple(cards),
            state=state,
        )

    def on_timer(self, fired: TimerFired) -> Effects:
        """At the deadline: DING every unit not done, and mark them on the aggregate."""
        task = parse_task(fired.event.data)
        state = copy.deepcopy(fired.state) or initial_state(task)
        late = [u for u in task.units if state["units"][u.id]["state"] != "done"]
        if not late:
            return Effects()
        state["overdue"] = True
        cards: list[Notice | CardUpdate] = [
            Notice(
                title=f"督办催办：{task.title}"[:100],
                text=f"**{u.name}**承办的督办任务（{task.task_id}）已超过办理时限，请立即报送进展。",
                users=u.handlers,
                urgent=True,
            )
            for u in late
        ]
        cards.append(
            CardUpdate(aggregate_changes(task, state), card=card_track_id(fired.event.event_id))
        )
        return Effects(cards=tuple(cards), state=state)
