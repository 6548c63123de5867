"""12345 hotline dispatch bot: a case becomes cards for a unit; each step goes back to the platform.

Lifecycle (the server's cards decide once, so each stage is a card):

* ``hotline.case`` → **dispatch card** to the unit's handlers (and, to see it,
  everyone in the unit and its sub-units): 签收 / 转办 / 退回, any-of.
* 签收 → **handling card** to the claimer: 办结 (with a reply) / 转办 / 退回.
* 转办 (from either card) → a new dispatch card to the chosen unit.
* 办结 / 退回 / 转办 on the handling card also update the dispatch card, so
  every holder of the case sees how it ended.

Each card's ``meta`` says which unit it is at and which dispatch card it
follows, so the bot keeps no other state. Decisions are forwarded as
``hotline.claimed`` / ``hotline.closed`` / ``hotline.returned`` /
``hotline.transferred`` (docs/bots.md section 7).
"""

from __future__ import annotations

from typing import Any, ClassVar

from bots.hotline.case import dispatch_card, handling_card, parse_case
from bots.runtime import (
    Bot,
    BotAction,
    BotEvent,
    BusinessCall,
    CardPush,
    CardUpdate,
    Effects,
    EventRejected,
)

FORWARD_TYPES = {
    "claim": "hotline.claimed",
    "close": "hotline.closed",
    "return": "hotline.returned",
    "transfer": "hotline.transferred",
}


class HotlineBot(Bot):
    """12345 cases → dispatch and handling cards; every step → the platform."""

    REFUSALS: ClassVar[dict[str, str]] = {"no_such_user": "unknown_user"}

    def on_event(self, event: BotEvent) -> Effects:
        if event.type != "hotline.case":
            raise EventRejected("unknown_event_type", f"no such event type {event.type!r}", "type")
        case = parse_case(event.data)
        unit = case.units[0]
        push = CardPush(
            dispatch_card(case, unit),
            users=unit.handlers,
            units=(unit.id,),
            meta={"role": "dispatch", "unit": unit.id},
        )
        return Effects(cards=(push,))

    def on_action(self, action: BotAction) -> Effects:
        cb = action.callback
        if action.event is None:  # not a card of ours (a foreign out_track_id)
            return Effects()
        case = parse_case(action.event.data)
        unit = case.unit(action.meta.get("unit", case.units[0].id))
        # The dispatch card this one follows (itself, for a dispatch card).
        dispatch = action.meta.get("dispatch", cb.out_track_id)
        body: dict[str, Any] = {
            "type": FORWARD_TYPES.get(cb.action, "hotline.action"),
            "case_id": case.case_id,
            "unit": unit.id,
            "actor": cb.actor,
            "at": cb.at,
        }
        cards: list[CardPush | CardUpdate] = []
        if cb.action == "claim":
            status = _status(f"已签收（{cb.actor}）", "blue")
            handle = CardPush(
                handling_card(case, unit, cb.actor),
                users=(cb.actor,),
                key=f"handle:{cb.action_id}",
                meta={"role": "handle", "unit": unit.id, "dispatch": dispatch},
            )
            cards.append(handle)
        elif cb.action == "close":
            body["reply"] = cb.inputs.get("reply", "")
            status = _status(f"已办结（{cb.actor}）", "green")
        elif cb.action == "transfer":
            target = case.unit(cb.inputs["target"])
            body.update(to_unit=target.id, reason=cb.inputs.get("reason", ""))
            status = _status(f"已转办至{target.name}", "gray")
            cards.append(
                CardPush(
                    dispatch_card(case, target),
                    users=target.handlers,
                    units=(target.id,),
                    key=f"dispatch:{cb.action_id}",
                    meta={"role": "dispatch", "unit": target.id},
                )
            )
        else:  # return
            body["reason"] = cb.inputs.get("reason", "")
            status = _status(f"已退回（{cb.actor}）", "red")
        if dispatch != cb.out_track_id:  # the unit's other holders see the outcome too
            cards.append(CardUpdate({"status": status}, card=dispatch))
        return Effects(
            forward=BusinessCall(body), answer=CardUpdate({"status": status}), cards=tuple(cards)
        )


def _status(text: str, color: str) -> dict[str, str]:
    return {"text": text[:32], "color": color}
