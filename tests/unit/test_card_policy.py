"""Unit tests for cards/policy.py: the pure approval state machine (或签 / 会签 / 依次).

Contract: docs/cards.md section 3 ("Policies", card ``state``) and section 5
(``action_id`` idempotency; ``not_actor``, ``not_your_turn``, ``card_decided``
with ``decided_by``, ``already_acted``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cards.policy import (
    ALL,
    ANY,
    APPROVE,
    APPROVED,
    CLOSED,
    DECISIONS,
    FINAL_STATES,
    OPEN,
    POLICY_TYPES,
    REJECT,
    REJECTED,
    SEQUENTIAL,
    Accepted,
    Act,
    ApprovalState,
    DecisionRecord,
    Policy,
    Refused,
    actionable_by,
    close,
    decide,
)

ACTORS = ("li", "wang", "zhao")
OUTSIDER = "mallory"

_ids = itertools.count()


def _fresh_id() -> str:
    return f"act-{next(_ids)}"


def card(ptype: str, actors: tuple[str, ...] = ACTORS) -> ApprovalState:
    return ApprovalState(Policy(ptype, actors))


def mkact(
    actor: str,
    decision: str = APPROVE,
    action_id: str | None = None,
    *,
    action: str | None = None,
    at: int = 1_764_400_000_000,
    inputs: dict[str, str] | None = None,
) -> Act:
    return Act(
        action_id=action_id if action_id is not None else _fresh_id(),
        actor=actor,
        action=action if action is not None else decision,
        decision=decision,
        at=at,
        inputs=inputs if inputs is not None else {},
    )


def accept(s: ApprovalState, a: Act) -> Accepted:
    r = decide(s, a)
    assert isinstance(r, Accepted), r
    return r


def refuse(s: ApprovalState, a: Act, code: str) -> Refused:
    r = decide(s, a)
    assert isinstance(r, Refused), r
    assert r.code == code, r
    return r


def run(s: ApprovalState, *acts: Act) -> ApprovalState:
    """Apply acts that must all be accepted (not repeats); return the final state."""
    for a in acts:
        r = accept(s, a)
        assert not r.repeat
        s = r.state
    return s


# --------------------------------------------------------------------------- any-of (或签)


def test_any_open_card_is_actionable_by_every_actor_in_order() -> None:
    s = card(ANY)
    assert s.state == OPEN
    assert s.decided_by is None
    assert actionable_by(s) == ACTORS


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("actor", ACTORS)
def test_any_first_act_decides(actor: str, decision: str) -> None:
    s = card(ANY)
    a = mkact(actor, decision, inputs={"comment": "ok"})
    r = accept(s, a)
    assert r.final is True
    assert r.repeat is False
    assert r.state.state == (APPROVED if decision == APPROVE else REJECTED)
    assert r.state.decided_by == actor
    assert r.state.decisions == (r.record,)
    assert r.record == DecisionRecord(
        a.action_id, actor, a.action, decision, a.at, {"comment": "ok"}
    )
    assert r.state.policy == s.policy
    assert actionable_by(r.state) == ()


@pytest.mark.parametrize("first_decision", DECISIONS)
@pytest.mark.parametrize("first", ACTORS)
def test_any_every_later_act_is_refused_naming_the_first_actor(
    first: str, first_decision: str
) -> None:
    s = run(card(ANY), mkact(first, first_decision))
    for actor in ACTORS:  # including the decider acting again with a new action_id
        for decision in DECISIONS:
            r = refuse(s, mkact(actor, decision), "card_decided")
            assert r.decided_by == first
            assert first in r.message
            assert s.state in r.message
    # the refusals changed nothing
    assert len(s.decisions) == 1
    assert s.decided_by == first


def test_any_single_actor() -> None:
    s = run(card(ANY, ("li",)), mkact("li", REJECT))
    assert (s.state, s.decided_by) == (REJECTED, "li")


# --------------------------------------------------------------------------- all-of (会签)


@pytest.mark.parametrize("order", list(itertools.permutations(ACTORS)))
def test_all_approves_only_on_the_last_approval(order: tuple[str, ...]) -> None:
    s = card(ALL)
    assert actionable_by(s) == ACTORS
    done: list[str] = []
    for i, actor in enumerate(order):
        r = accept(s, mkact(actor, APPROVE))
        s = r.state
        done.append(actor)
        last = i == len(order) - 1
        assert r.final is last
        assert s.state == (APPROVED if last else OPEN)
        assert s.decided_by == (actor if last else None)
        # actionable_by shrinks, keeping policy order
        assert actionable_by(s) == (() if last else tuple(a for a in ACTORS if a not in done))
    assert [d.actor for d in s.decisions] == list(order)
    assert s.decided_by == order[-1]


@pytest.mark.parametrize("n_before", [0, 1, 2])
def test_all_first_reject_rejects_immediately(n_before: int) -> None:
    s = card(ALL)
    s = run(s, *(mkact(a, APPROVE) for a in ACTORS[:n_before]))
    assert s.state == OPEN
    rejecter = ACTORS[n_before]
    r = accept(s, mkact(rejecter, REJECT))
    assert r.final is True
    assert r.state.state == REJECTED
    assert r.state.decided_by == rejecter
    assert actionable_by(r.state) == ()
    for actor in ACTORS:
        refused = refuse(r.state, mkact(actor, APPROVE), "card_decided")
        assert refused.decided_by == rejecter


@pytest.mark.parametrize("second", DECISIONS)
def test_all_acting_twice_is_already_acted(second: str) -> None:
    s = run(card(ALL), mkact("wang", APPROVE))
    r = refuse(s, mkact("wang", second), "already_acted")
    assert r.decided_by is None
    # the refused reject did not reject the card; the others can still finish it
    assert s.state == OPEN
    assert actionable_by(s) == ("li", "zhao")
    s = run(s, mkact("zhao"), mkact("li"))
    assert (s.state, s.decided_by) == (APPROVED, "li")


def test_all_single_actor_approval_approves() -> None:
    r = accept(card(ALL, ("li",)), mkact("li"))
    assert r.final
    assert (r.state.state, r.state.decided_by) == (APPROVED, "li")


# --------------------------------------------------------------------------- sequential (依次)


def test_sequential_only_the_first_actor_may_act() -> None:
    s = card(SEQUENTIAL)
    assert actionable_by(s) == ("li",)
    for actor in ("wang", "zhao"):
        for decision in DECISIONS:
            r = refuse(s, mkact(actor, decision), "not_your_turn")
            assert "li" in r.message
            assert r.decided_by is None


def test_sequential_approvals_advance_in_order_and_last_approves() -> None:
    s = card(SEQUENTIAL)
    r = accept(s, mkact("li"))
    assert not r.final
    s = r.state
    assert (s.state, s.decided_by) == (OPEN, None)
    assert actionable_by(s) == ("wang",)
    # li again (already acted), and zhao (too early), both wait for wang
    for actor in ("li", "zhao"):
        for decision in DECISIONS:
            refused = refuse(s, mkact(actor, decision), "not_your_turn")
            assert "wang" in refused.message
    r = accept(s, mkact("wang"))
    assert not r.final
    s = r.state
    assert actionable_by(s) == ("zhao",)
    refused = refuse(s, mkact("wang"), "not_your_turn")
    assert "zhao" in refused.message
    r = accept(s, mkact("zhao"))
    assert r.final
    s = r.state
    assert (s.state, s.decided_by) == (APPROVED, "zhao")
    assert [d.actor for d in s.decisions] == list(ACTORS)
    assert actionable_by(s) == ()


@pytest.mark.parametrize("pos", [0, 1, 2])
def test_sequential_reject_ends_with_rejected(pos: int) -> None:
    s = run(card(SEQUENTIAL), *(mkact(a) for a in ACTORS[:pos]))
    rejecter = ACTORS[pos]
    r = accept(s, mkact(rejecter, REJECT))
    assert r.final
    assert (r.state.state, r.state.decided_by) == (REJECTED, rejecter)
    assert actionable_by(r.state) == ()
    for actor in ACTORS:
        refused = refuse(r.state, mkact(actor), "card_decided")
        assert refused.decided_by == rejecter


def test_sequential_out_of_turn_reject_does_not_reject() -> None:
    s = card(SEQUENTIAL)
    refuse(s, mkact("zhao", REJECT), "not_your_turn")
    s = run(s, mkact("li"), mkact("wang"), mkact("zhao"))
    assert (s.state, s.decided_by) == (APPROVED, "zhao")


def test_sequential_single_actor() -> None:
    s = run(card(SEQUENTIAL, ("li",)), mkact("li"))
    assert (s.state, s.decided_by) == (APPROVED, "li")


# --------------------------------------------------------------------------- idempotency


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_repeat_on_open_card_returns_original_record_and_unchanged_state(ptype: str) -> None:
    s0 = card(ptype)
    original = mkact("li", APPROVE, "dup-1", inputs={"comment": "同意"})
    r1 = accept(s0, original)
    s1 = r1.state
    # the repeat carries different content: the first answer wins
    again = mkact("li", REJECT, "dup-1", action="other", at=5, inputs={"comment": "x"})
    r2 = accept(s1, again)
    assert r2.repeat is True
    assert r2.final is False
    assert r2.state == s1
    assert r2.record == r1.record
    assert r2.record.decision == APPROVE
    assert r2.record.inputs == {"comment": "同意"}


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_repeat_after_the_card_became_final(ptype: str) -> None:
    s = card(ptype)
    firsts: list[DecisionRecord] = []  # records of the accepted acts, in order
    acts = (
        [mkact("li", REJECT)]
        if ptype == ANY
        else [mkact("li"), mkact("wang"), mkact("zhao", REJECT)]
    )
    for a in acts:
        r = accept(s, a)
        firsts.append(r.record)
        s = r.state
    assert s.state == REJECTED
    for a, rec in zip(acts, firsts, strict=True):
        r = accept(s, a)
        assert r.repeat is True
        assert r.final is False
        assert r.state == s
        assert r.record == rec
        # a repeat by the same actor with a different decision is still the first answer
        r = accept(s, mkact(a.actor, APPROVE, a.action_id))
        assert r.repeat and r.record == rec and r.state == s


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_repeat_after_close(ptype: str) -> None:
    a = mkact("li")
    s = run(card(ptype), a)
    rec = s.decisions[0]
    closed = close(s, CLOSED)
    r = accept(closed, a)
    assert r.repeat and r.record == rec and r.state == closed


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_same_action_id_by_another_actor_is_a_conflict(ptype: str) -> None:
    s = run(card(ptype), mkact("li", APPROVE, "shared"))
    for other in ("wang", "zhao", OUTSIDER):
        r = refuse(s, mkact(other, APPROVE, "shared"), "action_id_conflict")
        assert r.decided_by is None
    # also after the card is final
    final = close(s, APPROVED, by="oa")
    refuse(final, mkact("wang", REJECT, "shared"), "action_id_conflict")


def test_repeat_in_the_middle_of_all_of_changes_nothing() -> None:
    s = run(card(ALL), mkact("li", APPROVE, "L"), mkact("wang", APPROVE, "W"))
    r = accept(s, mkact("li", APPROVE, "L"))
    assert r.repeat and r.state == s
    assert actionable_by(r.state) == ("zhao",)


def test_refused_action_id_is_not_consumed() -> None:
    # Only accepted acts are recorded, so an id whose act was refused can be used again
    # once the refusal reason is gone (a retry after not_your_turn).
    s = card(SEQUENTIAL)
    refuse(s, mkact("wang", APPROVE, "W"), "not_your_turn")
    s = run(s, mkact("li"))
    r = accept(s, mkact("wang", APPROVE, "W"))
    assert not r.repeat
    assert r.record.action_id == "W"


# --------------------------------------------------------------------------- non-actors


@pytest.mark.parametrize("phase", ["open", "partial", "decided", "closed"])
@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_non_actor_is_refused(ptype: str, phase: str) -> None:
    s = card(ptype)
    if phase == "partial" and ptype != ANY:
        s = run(s, mkact("li"))
    elif phase == "decided":
        s = run(s, mkact("li", REJECT))
    elif phase == "closed":
        s = close(s, CLOSED, by="oa")
    for decision in DECISIONS:
        r = refuse(s, mkact(OUTSIDER, decision), "not_actor")
        assert r.decided_by is None
    # actor ids are exact, case-sensitive strings
    refuse(s, mkact("LI"), "not_actor")


@pytest.mark.parametrize("state", [OPEN, *FINAL_STATES])
def test_without_policy_no_one_can_act(state: str) -> None:
    s = ApprovalState(None, state=state)
    assert actionable_by(s) == ()
    for actor in (*ACTORS, OUTSIDER):
        for decision in DECISIONS:
            refuse(s, mkact(actor, decision), "not_actor")


def test_without_policy_closed_by_close() -> None:
    s = close(ApprovalState(None), CLOSED)
    assert actionable_by(s) == ()
    refuse(s, mkact("li"), "not_actor")


# --------------------------------------------------------------------------- close()


@pytest.mark.parametrize("by", [None, "oa"])
@pytest.mark.parametrize("final_state", FINAL_STATES)
@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_close_sets_a_final_state(ptype: str, final_state: str, by: str | None) -> None:
    s = card(ptype)
    if ptype != ANY:
        s = run(s, mkact("li"))
    before = s
    c = close(s, final_state, by=by)
    assert c.state == final_state
    assert c.decided_by == by
    assert c.decisions == before.decisions
    assert c.policy == before.policy
    assert s == before  # pure: the input is untouched
    assert actionable_by(c) == ()
    for actor in ACTORS:
        for decision in DECISIONS:
            r = refuse(c, mkact(actor, decision), "card_decided")
            assert r.decided_by == by
            assert final_state in r.message
    refuse(c, mkact(OUTSIDER), "not_actor")


def test_close_default_by_is_none() -> None:
    c = close(card(ANY), REJECTED)
    assert (c.state, c.decided_by) == (REJECTED, None)
    r = refuse(c, mkact("li"), "card_decided")
    assert r.decided_by is None


@pytest.mark.parametrize("bad", [OPEN, "bogus", "", "Approved", "CLOSED"])
def test_close_rejects_non_final_states(bad: str) -> None:
    s = card(ALL)
    with pytest.raises(ValueError):
        close(s, bad)
    with pytest.raises(ValueError):
        close(s, bad, by="oa")


# --------------------------------------------------------------------------- misc


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_record_carries_the_act(ptype: str) -> None:
    a = mkact(
        "li", REJECT, "rid", action="deny", at=1_764_400_123_456, inputs={"comment": "不同意"}
    )
    r = accept(card(ptype), a)
    assert r.record == DecisionRecord("rid", "li", "deny", REJECT, 1_764_400_123_456, a.inputs)
    assert r.state.decisions[-1] == r.record


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_decide_does_not_touch_its_input(ptype: str) -> None:
    s = card(ptype)
    snapshot = ApprovalState(s.policy, s.state, s.decisions, s.decided_by)
    decide(s, mkact("li"))
    decide(s, mkact(OUTSIDER))
    assert s == snapshot


# --------------------------------------------------------------------------- reference model


@dataclass
class Ref:
    """An independent model of docs/cards.md sections 3 and 5."""

    ptype: str | None
    actors: tuple[str, ...]
    state: str = OPEN
    acted: list[str] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # accepted action_id -> actor
    decided_by: str | None = None

    def actionable(self) -> tuple[str, ...]:
        if self.ptype is None or self.state != OPEN:
            return ()
        if self.ptype == ANY:
            return self.actors
        if self.ptype == ALL:
            return tuple(a for a in self.actors if a not in self.acted)
        return (self.actors[len(self.acted)],)

    def act(self, actor: str, decision: str, action_id: str) -> str:
        """Return "accepted", "repeat" or the refusal code, updating the model."""
        if action_id in self.ids:
            return "repeat" if self.ids[action_id] == actor else "action_id_conflict"
        if self.ptype is None or actor not in self.actors:
            return "not_actor"
        if self.state != OPEN:
            return "card_decided"
        if self.ptype == SEQUENTIAL and actor != self.actors[len(self.acted)]:
            return "not_your_turn"
        if actor in self.acted:
            return "already_acted"
        self.ids[action_id] = actor
        self.acted.append(actor)
        if decision == REJECT:
            self.state = REJECTED
        elif self.ptype == ANY or len(self.acted) == len(self.actors):
            self.state = APPROVED
        if self.state != OPEN:
            self.decided_by = actor
        return "accepted"

    def close(self, state: str, by: str | None) -> None:
        self.state = state
        self.decided_by = by


def check_step(ref: Ref, before: ApprovalState, a: Act, r: Accepted | Refused, want: str) -> None:
    """``r = decide(before, a)`` and ``want`` is what the model said."""
    if want in ("accepted", "repeat"):
        assert isinstance(r, Accepted), (want, r)
        assert r.repeat is (want == "repeat")
        if want == "repeat":
            assert r.state == before
            assert r.final is False
            originals = [d for d in before.decisions if d.action_id == a.action_id]
            assert originals == [r.record]
        else:
            assert r.record == DecisionRecord(
                a.action_id, a.actor, a.action, a.decision, a.at, a.inputs
            )
            assert r.state.decisions == (*before.decisions, r.record)
            assert r.final is (r.state.state != OPEN)
    else:
        assert isinstance(r, Refused), (want, r)
        assert r.code == want, (want, r)
        if want == "card_decided":
            assert r.decided_by == before.decided_by == ref.decided_by
        else:
            assert r.decided_by is None
        if want == "not_your_turn":
            assert ref.actionable()[0] in r.message


def check_state(ref: Ref, s: ApprovalState) -> None:
    assert s.state == ref.state
    assert s.decided_by == ref.decided_by
    assert [d.actor for d in s.decisions] == ref.acted
    assert {d.action_id: d.actor for d in s.decisions} == ref.ids
    assert actionable_by(s) == ref.actionable()


def _sequences(
    alphabet: list[tuple[str, str]], max_len: int
) -> Iterator[tuple[tuple[str, str], ...]]:
    for n in range(max_len + 1):
        yield from itertools.product(alphabet, repeat=n)


@pytest.mark.parametrize("n_actors", [1, 2, 3])
@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_exhaustive_small_world(ptype: str, n_actors: int) -> None:
    actors = ACTORS[:n_actors]
    alphabet = [(who, d) for who in (*actors, OUTSIDER) for d in DECISIONS]
    count = 0
    outcomes: set[str] = set()
    for seq in _sequences(alphabet, 4):
        s = card(ptype, actors)
        ref = Ref(ptype, actors)
        check_state(ref, s)
        for i, (who, decision) in enumerate(seq):
            a = mkact(who, decision, f"s{i}")
            want = ref.act(who, decision, a.action_id)
            r = decide(s, a)
            check_step(ref, s, a, r, want)
            outcomes.add(want)
            if isinstance(r, Accepted):
                s = r.state
            check_state(ref, s)
        count += 1
    assert count == sum(len(alphabet) ** k for k in range(5))
    # the world is big enough to reach every outcome the policy allows
    expected = {"accepted", "not_actor", "card_decided"}
    if ptype == SEQUENTIAL and n_actors > 1:
        expected.add("not_your_turn")
    if ptype == ALL and n_actors > 1:
        expected.add("already_acted")
    assert outcomes == expected


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_exhaustive_small_world_with_reused_ids(ptype: str) -> None:
    """Two actors; every act either uses a fresh id or reuses one of the earlier ids."""
    actors = ACTORS[:2]
    who_what = [(who, d) for who in (*actors, OUTSIDER) for d in DECISIONS]
    for n in range(1, 4):
        for seq in itertools.product(who_what, repeat=n):
            # id choice for act i: an index < i (reuse) or i (fresh)
            for id_choice in itertools.product(*(range(i + 1) for i in range(n))):
                s = card(ptype, actors)
                ref = Ref(ptype, actors)
                for (who, decision), k in zip(seq, id_choice, strict=True):
                    a = mkact(who, decision, f"s{k}")
                    want = ref.act(who, decision, a.action_id)
                    r = decide(s, a)
                    check_step(ref, s, a, r, want)
                    if isinstance(r, Accepted):
                        s = r.state
                    check_state(ref, s)


# --------------------------------------------------------------------------- stateful

POOL = ("ann", "bob", "cat", "dan")  # not substrings of any message
OUTSIDERS = ("xena", "yves")


class PolicyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = ApprovalState(None)
        self.ref = Ref(None, ())
        self.used_ids: list[str] = []
        self.accepted_ids: set[str] = set()
        self.ended_by: str | None = None  # None | "policy" | "close"
        self.close_by: str | None = None

    @initialize(
        ptype=st.sampled_from(POLICY_TYPES),
        actors=st.lists(st.sampled_from(POOL), min_size=1, max_size=len(POOL), unique=True),
    )
    def setup(self, ptype: str, actors: list[str]) -> None:
        self.s = ApprovalState(Policy(ptype, tuple(actors)))
        self.ref = Ref(ptype, tuple(actors))

    @property
    def actors(self) -> tuple[str, ...]:
        assert self.s.policy is not None
        return self.s.policy.actors

    @rule(
        actor=st.sampled_from(POOL + OUTSIDERS),
        decision=st.sampled_from(DECISIONS),
        reuse=st.booleans(),
        data=st.data(),
    )
    def act(self, actor: str, decision: str, reuse: bool, data: st.DataObject) -> None:
        if reuse and self.used_ids:
            aid = data.draw(st.sampled_from(self.used_ids), label="reused id")
        else:
            aid = f"id{len(self.used_ids)}"
            self.used_ids.append(aid)
        a = mkact(actor, decision, aid)
        before = self.s
        want = self.ref.act(actor, decision, aid)
        r = decide(before, a)
        check_step(self.ref, before, a, r, want)
        after = r.state if isinstance(r, Accepted) else before
        # decisions never shrink (they only grow by appending)
        assert after.decisions[: len(before.decisions)] == before.decisions
        assert len(after.decisions) - len(before.decisions) in (0, 1)
        # once final, acts never change the card
        if before.state != OPEN:
            assert after == before
        if isinstance(r, Accepted) and not r.repeat:
            self.accepted_ids.add(aid)
            if r.final:
                self.ended_by = "policy"
        self.s = after

    @rule(state=st.sampled_from(FINAL_STATES), by=st.sampled_from([None, "oa"]))
    def do_close(self, state: str, by: str | None) -> None:
        before = self.s
        self.s = close(before, state, by=by)
        self.ref.close(state, by)
        self.ended_by = "close"
        self.close_by = by
        assert self.s.decisions == before.decisions
        assert self.s.policy == before.policy

    @invariant()
    def matches_reference(self) -> None:
        check_state(self.ref, self.s)

    @invariant()
    def accepted_actions_bounded(self) -> None:
        assert len(self.accepted_ids) == len(self.s.decisions) <= len(self.actors)
        assert {d.action_id for d in self.s.decisions} == self.accepted_ids
        actors = [d.actor for d in self.s.decisions]
        assert len(set(actors)) == len(actors)
        assert set(actors) <= set(self.actors)

    @invariant()
    def any_of_has_at_most_one_decision(self) -> None:
        if self.ref.ptype == ANY:
            assert len(self.s.decisions) <= 1

    @invariant()
    def decided_by_iff_decided_by_policy(self) -> None:
        s = self.s
        if self.ended_by == "policy":
            assert s.state in (APPROVED, REJECTED)
            assert s.decided_by is not None
            assert s.decided_by == s.decisions[-1].actor
            last = s.decisions[-1].decision
            assert s.state == (REJECTED if last == REJECT else APPROVED)
        elif self.ended_by == "close":
            assert s.state in FINAL_STATES
            assert s.decided_by == self.close_by
        else:
            assert s.state == OPEN
            assert s.decided_by is None

    @invariant()
    def actionable_within_actors(self) -> None:
        who = actionable_by(self.s)
        assert set(who) <= set(self.actors)
        if self.s.state != OPEN:
            assert who == ()
        else:
            assert who != ()

    @invariant()
    def sequential_decisions_are_a_prefix(self) -> None:
        if self.ref.ptype == SEQUENTIAL:
            actors = tuple(d.actor for d in self.s.decisions)
            assert actors == self.actors[: len(actors)]


PolicyMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
TestPolicyMachine = PolicyMachine.TestCase
