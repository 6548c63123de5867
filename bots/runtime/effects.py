"""What a bot returned → the JSON rows the outbox stores (pure, no I/O).

A bot may answer with the short forms of the first version of the runtime
(``CardPush``, ``CardUpdate``, ``(BusinessCall, CardUpdate)``) or with
:class:`Effects`; both become one :class:`Effects` here, and its card
operations become ``(key, op)`` rows. Keys are derived from what caused them
(the event id, the ``action_id``, the timer), so a repeat stores nothing new.
"""

from __future__ import annotations

from typing import Any

from bots.runtime.model import (
    BusinessCall,
    CardOp,
    CardPush,
    CardUpdate,
    Effects,
    Notice,
    Timer,
    card_track_id,
    track_id,
)


def event_effects(result: CardPush | CardUpdate | Effects | None) -> Effects:
    """``on_event``'s answer as :class:`Effects` (a forward or answer is a bot bug)."""
    if result is None:
        return Effects()
    if isinstance(result, Effects):
        if result.forward is not None or result.answer is not None:
            raise TypeError("on_event cannot forward or answer a callback")
        return result
    return Effects(cards=(result,))


def action_effects(result: tuple[BusinessCall | None, CardUpdate | None] | Effects) -> Effects:
    """``on_action``'s answer as :class:`Effects`."""
    if isinstance(result, Effects):
        return result
    call, update = result
    return Effects(forward=call, answer=update)


def op_rows(
    ops: tuple[CardOp, ...], event_id: str, prefix: str, *, first_key: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """``(key, op)`` rows; key ``<prefix><i>`` (or ``first_key`` for the first one).

    ``first_key`` keeps the keys of single-card events what they always were
    (``push:<event_id>``), so stores written by an earlier runtime replay.
    """
    rows = []
    for i, op in enumerate(ops):
        key = first_key if i == 0 and first_key is not None else f"{prefix}{i}"
        if isinstance(op, Timer):  # one timer per name and event, whoever sets it
            key = f"timer:{event_id}:{op.name}"
        rows.append((key, {"event_id": event_id, **_op(op, event_id)}))
    return rows


def _op(op: CardOp, event_id: str) -> dict[str, Any]:
    if isinstance(op, CardPush):
        card = {**op.card, "out_track_id": card_track_id(event_id, op.key)}
        out: dict[str, Any] = {"op": "push", "card": card}
        out.update(
            users=list(op.users),
            groups=list(op.groups),
            units=[{"id": u, "recursive": op.recursive} for u in op.units],
        )
        if op.meta:
            out["meta"] = dict(op.meta)
        return out
    if isinstance(op, CardUpdate):
        target = op.card or track_id(op.event_id or event_id)
        return {"op": "update", "out_track_id": target, "changes": dict(op.changes)}
    if isinstance(op, Notice):
        return {"op": "notice", "title": op.title, "text": op.text, "users": list(op.users),
                "urgent": op.urgent}  # fmt: skip
    if isinstance(op, Timer):
        return {"op": "timer", "at": op.at, "name": op.name, "data": dict(op.data)}
    raise TypeError(f"not a card operation: {op!r}")
