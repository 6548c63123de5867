"""The approval state machine (或签 / 会签 / 依次), pure.

``decide(state, act)`` takes the card's approval state and one person's act
and returns either ``Accepted`` (the new state, the record to store, and
whether this act ended the card) or ``Refused`` with a stable code. No I/O,
no clock: the caller stamps ``act.at`` and performs the effects (persist the
new state and the action atomically, enqueue the callback, fan out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

ANY, ALL, SEQUENTIAL = "any", "all", "sequential"
POLICY_TYPES = (ANY, ALL, SEQUENTIAL)

OPEN, APPROVED, REJECTED, CLOSED = "open", "approved", "rejected", "closed"
FINAL_STATES = (APPROVED, REJECTED, CLOSED)

APPROVE, REJECT = "approve", "reject"
DECISIONS = (APPROVE, REJECT)


@dataclass(slots=True, frozen=True)
class Policy:
    type: str
    actors: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class DecisionRecord:
    action_id: str
    actor: str
    action: str  # the button's id
    decision: str  # APPROVE | REJECT
    at: int  # ms since epoch
    inputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ApprovalState:
    policy: Policy | None
    state: str = OPEN
    decisions: tuple[DecisionRecord, ...] = ()
    decided_by: str | None = None  # whose act ended the card, if any


@dataclass(slots=True, frozen=True)
class Act:
    action_id: str
    actor: str
    action: str
    decision: str
    at: int
    inputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Accepted:
    state: ApprovalState
    record: DecisionRecord
    final: bool  # this act moved the card out of OPEN
    repeat: bool = False  # the same action_id was already accepted: nothing to do


@dataclass(slots=True, frozen=True)
class Refused:
    code: str  # not_actor | card_decided | not_your_turn | already_acted | action_id_conflict
    message: str
    decided_by: str | None = None


def actionable_by(s: ApprovalState) -> tuple[str, ...]:
    """Who may act now, in policy order (empty once the card is not open)."""
    if s.policy is None or s.state != OPEN:
        return ()
    done = {d.actor for d in s.decisions}
    if s.policy.type == SEQUENTIAL:
        for actor in s.policy.actors:
            if actor not in done:
                return (actor,)
        return ()
    if s.policy.type == ALL:
        return tuple(a for a in s.policy.actors if a not in done)
    return s.policy.actors  # ANY: everyone until someone decides


def decide(s: ApprovalState, act: Act) -> Accepted | Refused:
    for d in s.decisions:
        if d.action_id == act.action_id:
            if d.actor == act.actor:
                return Accepted(s, d, final=False, repeat=True)
            return Refused("action_id_conflict", "this action_id was used by someone else")
    policy = s.policy
    if policy is None or act.actor not in policy.actors:
        return Refused("not_actor", "you are not an approver of this card")
    if s.state != OPEN:
        who = f" by {s.decided_by}" if s.decided_by else ""
        return Refused("card_decided", f"this card is already {s.state}{who}", s.decided_by)
    pending = actionable_by(s)
    if act.actor not in pending:
        if policy.type == SEQUENTIAL:
            return Refused("not_your_turn", f"waiting for {pending[0]} first")
        return Refused("already_acted", "you have already acted on this card")
    record = DecisionRecord(act.action_id, act.actor, act.action, act.decision, act.at, act.inputs)
    decisions = (*s.decisions, record)
    new_state = OPEN
    if act.decision == REJECT or policy.type == ANY:
        new_state = APPROVED if act.decision == APPROVE else REJECTED
    elif len({d.actor for d in decisions}) == len(policy.actors):
        new_state = APPROVED  # ALL / SEQUENTIAL: the last approval
    final = new_state != OPEN
    return Accepted(
        replace(s, state=new_state, decisions=decisions, decided_by=act.actor if final else None),
        record,
        final=final,
    )


def close(s: ApprovalState, state: str, by: str | None = None) -> ApprovalState:
    """The app ends the card (approved / rejected / closed) regardless of policy."""
    if state not in FINAL_STATES:
        raise ValueError(f"not a final state: {state!r}")
    return replace(s, state=state, decided_by=by)
