"""The approval state machine (或签 / 会签 / 依次) and its OA workflow acts, pure.

``decide(state, act)`` takes the card's approval state and one person's act
and returns either ``Accepted`` (the new state, the record to store, and
whether this act ended the card) or ``Refused`` with a stable code. No I/O,
no clock: the caller stamps ``act.at``, checks what needs I/O (the target
user exists and is in the app's scope) and performs the effects (persist the
new state and the action atomically, enqueue the callback, fan out).

Besides decisions (approve / reject) an act may be ``neutral`` (已阅: recorded,
decides nothing), ``transfer`` (转交: the actor hands their step to another
user), ``add_signer`` (加签: one more approver, before or after the current
step of a sequential card, or into the set of an any-of / all-of card) or
``return`` (退回: to an earlier step of a sequential card, voiding the
decisions since, or to the initiator, ending the card as ``returned``). The
policy's actor list is therefore state: transfer and add-sign change it.
Every accepted act is appended to ``trail`` (what every holder sees); only
decisions that still count are in ``decisions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

ANY, ALL, SEQUENTIAL = "any", "all", "sequential"
POLICY_TYPES = (ANY, ALL, SEQUENTIAL)

OPEN, APPROVED, REJECTED, CLOSED, RETURNED = "open", "approved", "rejected", "closed", "returned"
FINAL_STATES = (APPROVED, REJECTED, CLOSED)  # what an app may set (PATCH, callback answer)
ENDED_STATES = (*FINAL_STATES, RETURNED)  # every state but OPEN

APPROVE, REJECT = "approve", "reject"
DECISIONS = (APPROVE, REJECT)

DECISION, NEUTRAL, TRANSFER, ADD_SIGNER, RETURN, LINK = (
    "decision",
    "neutral",
    "transfer",
    "add_signer",
    "return",
    "link",
)
#: Action kinds a person acts with (a ``link`` button only opens a URL).
ACT_KINDS = (DECISION, NEUTRAL, TRANSFER, ADD_SIGNER, RETURN)
ACTION_KINDS = (*ACT_KINDS, LINK)
BEFORE, AFTER = "before", "after"
POSITIONS = (BEFORE, AFTER)
TO_STEP, TO_INITIATOR = "step", "initiator"
RETURN_TARGETS = (TO_STEP, TO_INITIATOR)

MAX_ACTORS = 100  # also the schema's limit on policy.actors
MAX_TRAIL = 500  # accepted acts per card: keeps the stored state bounded


@dataclass(slots=True, frozen=True)
class Policy:
    type: str
    actors: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class Target:
    """What a workflow act points at: a user (转交, 加签), a position, a step (退回)."""

    user: str | None = None
    position: str | None = None  # add_signer on a sequential card: BEFORE | AFTER
    step: int | None = None  # return: index into the actors; None with to=initiator
    to: str | None = None  # return: TO_STEP | TO_INITIATOR


@dataclass(slots=True, frozen=True)
class DecisionRecord:
    """One accepted act as stored: a decision, or (``kind``) a workflow act."""

    action_id: str
    actor: str
    action: str  # the button's id
    decision: str | None  # APPROVE | REJECT for kind DECISION, else None
    at: int  # ms since epoch
    inputs: Mapping[str, str] = field(default_factory=dict)
    kind: str = DECISION
    target: Target | None = None  # for a return to a step: with the step's user
    voided: tuple[str, ...] = ()  # a return: the action ids of the decisions it voided


@dataclass(slots=True, frozen=True)
class ApprovalState:
    policy: Policy | None
    state: str = OPEN
    decisions: tuple[DecisionRecord, ...] = ()  # the decisions that count (not voided)
    decided_by: str | None = None  # whose act ended the card, if any
    trail: tuple[DecisionRecord, ...] = ()  # every accepted act, in order


@dataclass(slots=True, frozen=True)
class Act:
    action_id: str
    actor: str
    action: str
    decision: str | None
    at: int
    inputs: Mapping[str, str] = field(default_factory=dict)
    kind: str = DECISION
    target: Target | None = None


@dataclass(slots=True, frozen=True)
class Accepted:
    state: ApprovalState
    record: DecisionRecord
    final: bool  # this act moved the card out of OPEN
    repeat: bool = False  # the same action_id was already accepted: nothing to do


@dataclass(slots=True, frozen=True)
class Refused:
    # not_actor | card_decided | not_your_turn | already_acted | action_id_conflict |
    # already_actor | too_many_actors | no_such_step | step_changed | trail_full
    code: str
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


def current_step(s: ApprovalState) -> int | None:
    """The index of the current actor of an open sequential card, else None."""
    who = actionable_by(s)
    if s.policy is None or s.policy.type != SEQUENTIAL or not who:
        return None
    return s.policy.actors.index(who[0])


def decide(s: ApprovalState, act: Act) -> Accepted | Refused:
    """Accept or refuse ``act`` on ``s``; a refusal leaves ``s`` exactly as it was."""
    for d in s.trail or s.decisions:
        if d.action_id == act.action_id:
            if d.actor == act.actor:
                return Accepted(s, d, final=False, repeat=True)
            return Refused("action_id_conflict", "this action_id was used by someone else")
    if act.kind == NEUTRAL:
        return _neutral(s, act)
    policy = s.policy
    if policy is None or act.actor not in policy.actors:
        if s.state == OPEN and _handed_on(s, act.actor):
            return Refused("not_actor", "you handed your step on; you are no longer an approver")
        return Refused("not_actor", "you are not an approver of this card")
    refused = _may_act_now(s, act.actor)
    if refused is not None:
        return refused
    if len(s.trail) >= MAX_TRAIL:
        return Refused("trail_full", f"this card has had {MAX_TRAIL} acts; the app must end it")
    if act.kind == TRANSFER:
        return _transfer(s, policy, act)
    if act.kind == ADD_SIGNER:
        return _add_signer(s, policy, act)
    if act.kind == RETURN:
        return _return(s, policy, act)
    return _decision(s, policy, act)


def _record(act: Act, target: Target | None = None, voided: tuple[str, ...] = ()) -> DecisionRecord:
    decision = act.decision if act.kind == DECISION else None
    return DecisionRecord(
        act.action_id,
        act.actor,
        act.action,
        decision,
        act.at,
        act.inputs,
        act.kind,
        target if target is not None else act.target,
        voided,
    )


def _trail(s: ApprovalState) -> tuple[DecisionRecord, ...]:
    """The trail so far (a state stored before trails existed: its decisions)."""
    return s.trail if s.trail else s.decisions


def _handed_on(s: ApprovalState, actor: str) -> bool:
    return any(d.kind == TRANSFER and d.actor == actor for d in s.trail)


def _may_act_now(s: ApprovalState, actor: str) -> Refused | None:
    if s.state != OPEN:
        who = f" by {s.decided_by}" if s.decided_by else ""
        return Refused("card_decided", f"this card is already {s.state}{who}", s.decided_by)
    pending = actionable_by(s)
    if actor in pending:
        return None
    assert s.policy is not None
    if s.policy.type == SEQUENTIAL:
        return Refused("not_your_turn", f"waiting for {pending[0]} first")
    return Refused("already_acted", "you have already acted on this card")


def _neutral(s: ApprovalState, act: Act) -> Accepted | Refused:
    """已阅 / 知悉: any holder, once per button, while the card is open; decides nothing."""
    if s.state != OPEN:
        who = f" by {s.decided_by}" if s.decided_by else ""
        return Refused("card_decided", f"this card is already {s.state}{who}", s.decided_by)
    if any(d.actor == act.actor and d.action == act.action for d in s.trail):
        return Refused("already_acted", f"you have already pressed {act.action!r}")
    if len(s.trail) >= MAX_TRAIL:
        return Refused("trail_full", f"this card has had {MAX_TRAIL} acts; the app must end it")
    record = _record(act)
    return Accepted(replace(s, trail=(*_trail(s), record)), record, final=False)


def _decision(s: ApprovalState, policy: Policy, act: Act) -> Accepted:
    record = _record(act)
    decisions = (*s.decisions, record)
    done = {d.actor for d in decisions}
    new_state = OPEN
    if act.decision == REJECT or policy.type == ANY:
        new_state = APPROVED if act.decision == APPROVE else REJECTED
    elif all(a in done for a in policy.actors):
        new_state = APPROVED  # ALL / SEQUENTIAL: the last approval
    final = new_state != OPEN
    return Accepted(
        replace(
            s,
            state=new_state,
            decisions=decisions,
            decided_by=act.actor if final else None,
            trail=(*_trail(s), record),
        ),
        record,
        final=final,
    )


def _new_actor(s: ApprovalState, policy: Policy, act: Act) -> str | Refused:
    user = act.target.user if act.target is not None else None
    if user is None:
        return Refused("no_such_user", "name the user to hand the step to")
    if user in policy.actors:
        return Refused("already_actor", f"{user} is already an approver of this card")
    return user


def _transfer(s: ApprovalState, policy: Policy, act: Act) -> Accepted | Refused:
    """转交: the actor's place in the list goes to the target, who acts instead."""
    user = _new_actor(s, policy, act)
    if isinstance(user, Refused):
        return user
    actors = tuple(user if a == act.actor else a for a in policy.actors)
    record = _record(act, Target(user=user))
    return Accepted(
        replace(s, policy=replace(policy, actors=actors), trail=(*_trail(s), record)),
        record,
        final=False,
    )


def _add_signer(s: ApprovalState, policy: Policy, act: Act) -> Accepted | Refused:
    """加签: sequential — a step before (they act first) or after the actor's;
    all-of — one more who must approve; any-of — one more who may decide."""
    user = _new_actor(s, policy, act)
    if isinstance(user, Refused):
        return user
    if len(policy.actors) >= MAX_ACTORS:
        return Refused("too_many_actors", f"a card has at most {MAX_ACTORS} approvers")
    target = Target(user=user)
    if policy.type == SEQUENTIAL:
        position = act.target.position if act.target and act.target.position else AFTER
        at = policy.actors.index(act.actor) + (1 if position == AFTER else 0)
        actors = (*policy.actors[:at], user, *policy.actors[at:])
        target = Target(user=user, position=position)
    else:
        actors = (*policy.actors, user)
    record = _record(act, target)
    return Accepted(
        replace(s, policy=replace(policy, actors=actors), trail=(*_trail(s), record)),
        record,
        final=False,
    )


def _return(s: ApprovalState, policy: Policy, act: Act) -> Accepted | Refused:
    """退回: to the initiator (the card ends ``returned``) or to an earlier step."""
    if act.target is None or act.target.to != TO_STEP:
        record = _record(act, Target(to=TO_INITIATOR))
        return Accepted(
            replace(s, state=RETURNED, decided_by=act.actor, trail=(*_trail(s), record)),
            record,
            final=True,
        )
    step, here = act.target.step, current_step(s)
    if policy.type != SEQUENTIAL or here is None:
        return Refused("no_such_step", "only a sequential card has steps to return to")
    if step is None or not 0 <= step < len(policy.actors):
        return Refused("no_such_step", f"this card has steps 0-{len(policy.actors) - 1}")
    if step >= here:
        return Refused("step_changed", f"step {step} is not before the current step {here}")
    again = set(policy.actors[step:here])
    voided = tuple(d.action_id for d in s.decisions if d.actor in again)
    record = _record(act, Target(to=TO_STEP, step=step, user=policy.actors[step]), voided)
    kept = tuple(d for d in s.decisions if d.actor not in again)
    return Accepted(
        replace(s, decisions=kept, trail=(*_trail(s), record)),
        record,
        final=False,
    )


def close(s: ApprovalState, state: str, by: str | None = None) -> ApprovalState:
    """The app ends the card (approved / rejected / closed) regardless of policy."""
    if state not in FINAL_STATES:
        raise ValueError(f"not a final state: {state!r}")
    return replace(s, state=state, decided_by=by)
