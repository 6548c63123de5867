"""Unit tests for the OA workflow acts of cards/policy.py (已阅, 转交, 加签, 退回) and
their inputs (cards/workflow_inputs.py, the action schema in cards/model.py).

Contract: docs/cards.md section 5a ("OA actions"): who may do each act, what it
changes (the actor list is state; ``actionable_by`` is who has the card in
their todo), the trail, refusal codes, and exactly one decision.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from jsonschema import Draft202012Validator

from cards.model import approval_from_json, approval_to_json, parse_card
from cards.policy import (
    ADD_SIGNER,
    AFTER,
    ALL,
    ANY,
    APPROVE,
    APPROVED,
    BEFORE,
    CLOSED,
    DECISION,
    MAX_ACTORS,
    NEUTRAL,
    OPEN,
    POLICY_TYPES,
    REJECT,
    REJECTED,
    RETURN,
    RETURNED,
    SEQUENTIAL,
    TO_INITIATOR,
    TO_STEP,
    TRANSFER,
    Accepted,
    Act,
    ApprovalState,
    Policy,
    Refused,
    Target,
    actionable_by,
    close,
    current_step,
    decide,
)
from cards.workflow_inputs import link_url, parse_target
from imserver.config import CardsConfig
from imserver.errors import InvalidField

LIMITS = CardsConfig()
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "card.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
_ids = itertools.count()


def mk(
    actor: str,
    kind: str = DECISION,
    decision: str | None = APPROVE,
    *,
    target: Target | None = None,
    action_id: str | None = None,
    action: str | None = None,
) -> Act:
    return Act(
        action_id=action_id if action_id is not None else f"w{next(_ids)}",
        actor=actor,
        action=action if action is not None else (decision if kind == DECISION else kind) or kind,
        decision=decision if kind == DECISION else None,
        at=1_764_400_000_000,
        inputs={},
        kind=kind,
        target=target,
    )


def card(ptype: str, actors: tuple[str, ...] = ("li", "wang", "zhao")) -> ApprovalState:
    return ApprovalState(Policy(ptype, actors))


def ok(s: ApprovalState, a: Act) -> ApprovalState:
    r = decide(s, a)
    assert isinstance(r, Accepted) and not r.repeat, r
    return r.state


def no(s: ApprovalState, a: Act, code: str) -> None:
    r = decide(s, a)
    assert isinstance(r, Refused), r
    assert r.code == code, r


def actors(s: ApprovalState) -> tuple[str, ...]:
    assert s.policy is not None
    return s.policy.actors


# --------------------------------------------------------------------------- 已阅 (neutral)


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_neutral_any_holder_once_per_button_decides_nothing(ptype: str) -> None:
    s = card(ptype)
    after = ok(s, mk("guest", NEUTRAL, action="read"))  # not an approver: still fine
    assert (after.state, after.decisions, actionable_by(after)) == (OPEN, (), actionable_by(s))
    assert [(t.actor, t.kind) for t in after.trail] == [("guest", NEUTRAL)]
    no(after, mk("guest", NEUTRAL, action="read"), "already_acted")
    after = ok(after, mk("guest", NEUTRAL, action="ack"))  # another neutral button
    assert len(after.trail) == 2


def test_neutral_on_a_card_without_policy_and_not_after_the_end() -> None:
    s = ok(ApprovalState(None), mk("li", NEUTRAL))
    assert s.state == OPEN and len(s.trail) == 1
    no(close(s, CLOSED), mk("wang", NEUTRAL), "card_decided")


# --------------------------------------------------------------------------- 转交 (transfer)


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_transfer_hands_the_step_to_the_target(ptype: str) -> None:
    s = ok(card(ptype), mk("li", TRANSFER, target=Target(user="chen")))
    assert actors(s) == ("chen", "wang", "zhao")
    assert "li" not in actionable_by(s) and "chen" in actionable_by(s)
    assert s.decisions == () and s.state == OPEN
    assert s.trail[-1].kind == TRANSFER and s.trail[-1].target == Target(user="chen")
    no(s, mk("li"), "not_actor")  # the old actor's 同意 from another device
    s = ok(s, mk("chen", decision=REJECT))
    assert (s.state, s.decided_by) == (REJECTED, "chen")


def test_transfer_only_by_whose_turn_it_is_and_never_to_an_approver() -> None:
    s = card(SEQUENTIAL)
    no(s, mk("wang", TRANSFER, target=Target(user="chen")), "not_your_turn")
    no(s, mk("li", TRANSFER, target=Target(user="zhao")), "already_actor")
    no(s, mk("li", TRANSFER, target=Target(user="li")), "already_actor")
    no(s, mk("mallory", TRANSFER, target=Target(user="chen")), "not_actor")
    s = ok(card(ALL), mk("li"))
    no(s, mk("li", TRANSFER, target=Target(user="chen")), "already_acted")


def test_transfer_and_approve_race_one_outcome_either_order() -> None:
    s = card(ANY)
    transfer, approve = mk("li", TRANSFER, target=Target(user="chen")), mk("li")
    first = ok(s, transfer)
    no(first, approve, "not_actor")
    first = ok(s, approve)
    no(first, transfer, "card_decided")


# --------------------------------------------------------------------------- 加签 (add signer)


def test_add_signer_before_makes_them_act_first() -> None:
    s = ok(card(SEQUENTIAL), mk("li"))
    s = ok(s, mk("wang", ADD_SIGNER, target=Target(user="chen", position=BEFORE)))
    assert actors(s) == ("li", "chen", "wang", "zhao")
    assert actionable_by(s) == ("chen",)
    no(s, mk("wang"), "not_your_turn")
    s = ok(ok(ok(s, mk("chen")), mk("wang")), mk("zhao"))
    assert s.state == APPROVED


def test_add_signer_after_keeps_the_actor_current() -> None:
    s = ok(card(SEQUENTIAL), mk("li", ADD_SIGNER, target=Target(user="chen", position=AFTER)))
    assert actors(s) == ("li", "chen", "wang", "zhao")
    assert actionable_by(s) == ("li",)
    s = ok(s, mk("li"))
    assert actionable_by(s) == ("chen",)


def test_add_signer_all_of_must_also_approve() -> None:
    s = ok(ok(card(ALL, ("li", "wang")), mk("li")), mk("wang", ADD_SIGNER, target=Target("chen")))
    assert set(actionable_by(s)) == {"wang", "chen"}
    s = ok(s, mk("wang"))
    assert s.state == OPEN  # chen has not approved yet
    assert ok(s, mk("chen")).state == APPROVED


def test_add_signer_any_of_may_decide_too() -> None:
    s = ok(card(ANY, ("li",)), mk("li", ADD_SIGNER, target=Target("chen")))
    assert actionable_by(s) == ("li", "chen")
    s = ok(s, mk("chen"))
    assert (s.state, s.decided_by) == (APPROVED, "chen")


def test_add_signer_stops_at_the_actor_limit() -> None:
    full = card(ALL, tuple(f"u{i}" for i in range(MAX_ACTORS)))
    no(full, mk("u0", ADD_SIGNER, target=Target("chen")), "too_many_actors")


# --------------------------------------------------------------------------- 退回 (return)


def test_return_to_a_step_voids_the_decisions_since_and_keeps_them_in_the_trail() -> None:
    s = ok(ok(card(SEQUENTIAL), mk("li", action_id="li-ok")), mk("wang", action_id="wang-ok"))
    assert current_step(s) == 2
    s = ok(s, mk("zhao", RETURN, target=Target(to=TO_STEP, step=0)))
    assert actionable_by(s) == ("li",) and s.decisions == ()
    ret = s.trail[-1]
    assert ret.voided == ("li-ok", "wang-ok")
    assert ret.target == Target(to=TO_STEP, step=0, user="li")
    assert [t.action_id for t in s.trail[:2]] == ["li-ok", "wang-ok"]
    # the voided approvals never count: all three must approve again
    s = ok(ok(s, mk("li")), mk("wang"))
    assert s.state == OPEN
    assert ok(s, mk("zhao")).state == APPROVED
    # a repeat of a voided decision's id is a repeat, not a new approval
    r = decide(s, mk("li", action_id="li-ok"))
    assert isinstance(r, Accepted) and r.repeat and r.state == s


def test_return_step_codes() -> None:
    s = ok(card(SEQUENTIAL), mk("li"))  # wang is at step 1
    no(s, mk("wang", RETURN, target=Target(to=TO_STEP, step=7)), "no_such_step")
    no(s, mk("wang", RETURN, target=Target(to=TO_STEP, step=-1)), "no_such_step")
    no(s, mk("wang", RETURN, target=Target(to=TO_STEP, step=1)), "step_changed")
    no(s, mk("wang", RETURN, target=Target(to=TO_STEP, step=2)), "step_changed")
    no(card(ALL), mk("li", RETURN, target=Target(to=TO_STEP, step=0)), "no_such_step")


@pytest.mark.parametrize("ptype", POLICY_TYPES)
def test_return_to_the_initiator_ends_the_card_returned(ptype: str) -> None:
    s = ok(card(ptype), mk("li", RETURN, target=Target(to=TO_INITIATOR)))
    assert (s.state, s.decided_by, actionable_by(s)) == (RETURNED, "li", ())
    no(s, mk("wang"), "card_decided")
    no(s, mk("wang", NEUTRAL), "card_decided")


def test_returned_card_is_not_closed_over_by_the_app_state_check() -> None:
    s = ok(card(ANY), mk("li", RETURN, target=Target(to=TO_INITIATOR)))
    assert s.state == RETURNED  # service: an app's state change only applies to OPEN cards


def test_approval_json_keeps_trail_targets_and_voided() -> None:
    s = ok(ok(card(SEQUENTIAL), mk("li")), mk("wang", TRANSFER, target=Target("chen")))
    s = ok(s, mk("chen", RETURN, target=Target(to=TO_STEP, step=0)))
    doc = {"policy": {"type": SEQUENTIAL, "actors": list(actors(s))}}
    assert approval_from_json(doc, approval_to_json(s)) == s


def test_a_state_stored_before_trails_still_reads_and_repeats() -> None:
    doc = {"policy": {"type": ALL, "actors": ["li", "wang"]}}
    old = {
        "state": "open",
        "decided_by": None,
        "decisions": [
            {
                "action_id": "a1",
                "actor": "li",
                "action": "approve",
                "decision": "approve",
                "at": 1,
                "inputs": {},
            }
        ],
    }
    s = approval_from_json(doc, old)
    r = decide(s, mk("li", action_id="a1"))
    assert isinstance(r, Accepted) and r.repeat
    s = ok(s, mk("wang"))
    assert s.state == APPROVED and s.trail[0].action_id == "a1"


# --------------------------------------------------------------------------- property test

POOL = ("a", "b", "c", "d", "e")
KINDS = (DECISION, NEUTRAL, TRANSFER, ADD_SIGNER, RETURN)


class WorkflowMachine(RuleBasedStateMachine):
    """Random sequences of every act kind; the invariants of docs/cards.md 5a."""

    def __init__(self) -> None:
        super().__init__()
        self.s = ApprovalState(None)
        self.accepted: dict[str, tuple[str, ApprovalState]] = {}  # action id → (actor, after)
        self.finals = 0
        self.used: list[tuple[str, str]] = []

    @initialize(
        ptype=st.sampled_from(POLICY_TYPES),
        first=st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True),
    )
    def setup(self, ptype: str, first: list[str]) -> None:
        self.s = ApprovalState(Policy(ptype, tuple(first)))

    @rule(
        actor=st.sampled_from((*POOL, "x")),
        kind=st.sampled_from(KINDS),
        decision=st.sampled_from((APPROVE, REJECT)),
        user=st.sampled_from((*POOL, "x")),
        position=st.sampled_from((BEFORE, AFTER)),
        to=st.sampled_from((TO_STEP, TO_STEP, TO_STEP, TO_INITIATOR)),  # the end: rarer
        step=st.integers(-1, 5),
        reuse=st.booleans(),
        data=st.data(),
    )
    def act(
        self,
        actor: str,
        kind: str,
        decision: str,
        user: str,
        position: str,
        to: str,
        step: int,
        reuse: bool,
        data: st.DataObject,
    ) -> None:
        if reuse and self.used:
            aid, actor = data.draw(st.sampled_from(self.used), label="repeat")
        else:
            turn: bool = data.draw(st.booleans(), label="whose turn")
            aid = f"id{len(self.used)}"
            pending = actionable_by(self.s)
            if pending and turn:
                actor = data.draw(st.sampled_from(pending), label="pending actor")
        target = None
        if kind in (TRANSFER, ADD_SIGNER):
            target = Target(user=user, position=position)
        elif kind == RETURN:
            target = Target(to=to, step=step if to == TO_STEP else None)
        self._apply(mk(actor, kind, decision, target=target, action_id=aid))

    @rule(data=st.data())
    def return_to_an_earlier_step(self, data: st.DataObject) -> None:
        """Random acts seldom reach step 2 of a sequential card: walk back from there."""
        here = current_step(self.s)
        if not here:
            return
        step = data.draw(st.integers(0, here - 1), label="earlier step")
        actor = actionable_by(self.s)[0]
        aid = f"id{len(self.used)}"
        self._apply(mk(actor, RETURN, None, target=Target(to=TO_STEP, step=step), action_id=aid))

    @rule()
    def approve_in_turn(self) -> None:
        pending = actionable_by(self.s)
        if pending and self.s.policy is not None and self.s.policy.type != ANY:
            self._apply(mk(pending[0], action_id=f"id{len(self.used)}"))

    def _apply(self, a: Act) -> None:
        aid, actor = a.action_id, a.actor
        before = self.s
        snapshot = copy.deepcopy(before)
        r = decide(before, a)
        assert before == snapshot  # decide never mutates
        if isinstance(r, Refused):
            return  # nothing changes: self.s stays ``before``
        self.used.append((aid, actor))
        if r.repeat:
            assert r.state == before  # a repeat changes nothing
            assert aid in self.accepted and self.accepted[aid][0] == actor
            return
        after = r.state
        assert aid not in self.accepted
        self.accepted[aid] = (actor, after)
        assert before.state == OPEN  # nothing is accepted on an ended card
        assert after.trail[: len(before.trail)] == (before.trail or before.decisions)
        assert len(after.trail) == len(before.trail or before.decisions) + 1
        if r.final:
            self.finals += 1
        self.s = after

    @rule(state=st.sampled_from((APPROVED, REJECTED, CLOSED)), dice=st.integers(0, 9))
    def app_closes(self, state: str, dice: int) -> None:
        if self.s.state == OPEN and dice == 0:  # rarely: let the workflow run first
            self.s = close(self.s, state, "oa")
            self.finals += 1

    @invariant()
    def at_most_one_final_decision(self) -> None:
        assert self.finals <= 1
        assert (self.s.state == OPEN) == (self.finals == 0)

    @invariant()
    def actors_unique_and_bounded(self) -> None:
        if self.s.policy is None:
            return
        a = self.s.policy.actors
        assert len(set(a)) == len(a) <= MAX_ACTORS

    @invariant()
    def actionable_by_is_consistent(self) -> None:
        s = self.s
        who = actionable_by(s)
        if s.policy is None or s.state != OPEN:
            assert who == ()
            return
        done = {d.actor for d in s.decisions}
        a = s.policy.actors
        if s.policy.type == ANY:
            assert who == a and not s.decisions
        elif s.policy.type == ALL:
            assert who == tuple(x for x in a if x not in done) and who
        else:
            k = a.index(who[0])
            assert done == set(a[:k])  # the counting decisions are exactly the steps before

    @invariant()
    def voided_decisions_never_count(self) -> None:
        s = self.s
        voided = {v for t in s.trail for v in t.voided}
        trail_ids = {t.action_id for t in s.trail}
        for d in s.decisions:
            assert d.action_id not in voided and d.action_id in trail_ids
            assert d.kind == DECISION
            assert s.policy is not None and d.actor in s.policy.actors
        assert len({d.actor for d in s.decisions}) == len(s.decisions)
        counted = [t for t in s.trail if t.kind == DECISION and t.action_id not in voided]
        assert counted == list(s.decisions)

    @invariant()
    def an_end_by_the_policy_matches_the_counting_decisions(self) -> None:
        s = self.s
        if s.state == APPROVED and s.decided_by != "oa":
            assert s.policy is not None
            approvals = {d.actor for d in s.decisions if d.decision == APPROVE}
            if s.policy.type == ANY:
                assert len(s.decisions) == 1 and s.decisions[0].decision == APPROVE
            else:
                assert approvals == set(s.policy.actors)
        if s.state == REJECTED and s.decided_by != "oa":
            assert s.decisions[-1].decision == REJECT
        if s.state == RETURNED:
            assert s.trail[-1].kind == RETURN and s.trail[-1].target == Target(to=TO_INITIATOR)
            assert s.decided_by == s.trail[-1].actor

    @invariant()
    def stored_form_round_trips(self) -> None:
        s = self.s
        doc: dict[str, Any] = {"policy": None}
        if s.policy is not None:
            doc["policy"] = {"type": s.policy.type, "actors": list(s.policy.actors)}
        assert approval_from_json(doc, approval_to_json(s)) == s


WorkflowMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
TestWorkflowMachine = WorkflowMachine.TestCase


# --------------------------------------------------------------------------- schema and inputs

BASE: dict[str, Any] = {
    "out_track_id": "t1",
    "title": "公文审批",
    "inputs": [{"id": "comment", "type": "text", "label": "意见", "required_for": ["back"]}],
    "policy": {"type": "sequential", "actors": ["li", "wang"]},
}
EVERY_KIND = [
    {"id": "ok", "label": "同意", "decision": "approve"},
    {"id": "read", "label": "已阅", "kind": "neutral"},
    {"id": "give", "label": "转交", "kind": "transfer"},
    {"id": "add", "label": "加签", "kind": "add_signer"},
    {"id": "back", "label": "退回", "kind": "return", "to": "step"},
    {"id": "open", "label": "查看原文", "kind": "link", "url": "https://oa.gov.cn/doc/1?x=一"},
]


def _field(card: dict[str, Any]) -> str | None:
    try:
        parse_card(card, LIMITS)
    except InvalidField as e:
        return e.field
    return None


def test_every_kind_parses_and_the_schema_agrees() -> None:
    doc = {**BASE, "actions": EVERY_KIND}
    parsed = parse_card(doc, LIMITS)
    assert [a["kind"] for a in parsed["actions"]] == [
        "decision",
        "neutral",
        "transfer",
        "add_signer",
        "return",
        "link",
    ]
    assert parsed["actions"][4]["to"] == "step"
    assert parsed["actions"][5]["url"].startswith("https://")
    assert "decision" not in parsed["actions"][1]
    assert list(VALIDATOR.iter_errors(doc)) == []


BAD_URLS = [
    "javascript:alert(1)",
    "JAVASCRIPT:alert(1)",
    "data:text/html,x",
    "ftp://oa.gov.cn/x",
    "https://",
    "https://good.gov.cn@evil.example/",
    "https://oa.gov.cn/a b",
    "https://oa.gov.cn/\n",
    "https://oa.gov.cn\\@evil/",
    "//oa.gov.cn/x",
    "https://oa.gov.cn/" + "a" * 2000,
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_link_urls_other_than_http_are_refused_by_both(url: str) -> None:
    doc = {
        **BASE,
        "actions": [EVERY_KIND[0], {"id": "l", "label": "l", "kind": "link", "url": url}],
    }
    doc["inputs"] = []
    assert _field(doc) == "card.actions[1].url"
    assert list(VALIDATOR.iter_errors(doc)) != []
    with pytest.raises(InvalidField):
        link_url(url, "u")


SCHEMA_CASES = [
    ("unknown kind", {"id": "x", "label": "x", "kind": "forward"}, "card.actions[1].kind"),
    (
        "decision on a neutral",
        {"id": "x", "label": "x", "kind": "neutral", "decision": "approve"},
        "card.actions[1].decision",
    ),
    ("return without to", {"id": "back", "label": "x", "kind": "return"}, "card.actions[1].to"),
    (
        "return to nowhere",
        {"id": "back", "label": "x", "kind": "return", "to": "boss"},
        "card.actions[1].to",
    ),
    ("link without url", {"id": "x", "label": "x", "kind": "link"}, "card.actions[1].url"),
    ("decision missing", {"id": "x", "label": "x"}, "card.actions[1].decision"),
]


@pytest.mark.parametrize(
    ("action", "path"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES]
)
def test_bad_actions_are_refused_by_both(action: dict[str, Any], path: str) -> None:
    doc = {**BASE, "actions": [EVERY_KIND[0], action]}
    doc["inputs"] = [{**BASE["inputs"][0], "required_for": []}]
    assert _field(doc) == path
    assert list(VALIDATOR.iter_errors(doc)) != []


def test_rules_beyond_the_schema() -> None:
    back = {"id": "back", "label": "退回", "kind": "return", "to": "step"}
    on_any = {**BASE, "actions": [back], "policy": {"type": "any", "actors": ["li"]}}
    assert _field(on_any) == "card.actions[0].to"
    no_reason = {**BASE, "actions": [back], "inputs": []}
    assert _field(no_reason) == "card.actions[0]"
    to_initiator = {**no_reason, "actions": [{**back, "to": "initiator"}]}
    assert _field(to_initiator) == "card.actions[0]"
    for doc in (on_any, no_reason, to_initiator):
        assert list(VALIDATOR.iter_errors(doc)) == []  # listed in the schema's $comment


def _spec(kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": kind, "label": kind, "kind": kind, **extra}


SEQ_DOC = {"policy": {"type": "sequential", "actors": ["li"]}}
ALL_DOC = {"policy": {"type": "all", "actors": ["li"]}}


@pytest.mark.parametrize(
    ("doc", "spec", "target", "path"),
    [
        (SEQ_DOC, _spec(TRANSFER), None, "target.user"),
        (SEQ_DOC, _spec(TRANSFER), {"user": ""}, "target.user"),
        (SEQ_DOC, _spec(TRANSFER), {"user": "c", "position": "before"}, "target.position"),
        (SEQ_DOC, _spec(TRANSFER), "c", "target"),
        (SEQ_DOC, _spec(ADD_SIGNER), {"user": "c"}, "target.position"),
        (SEQ_DOC, _spec(ADD_SIGNER), {"user": "c", "position": "middle"}, "target.position"),
        (ALL_DOC, _spec(ADD_SIGNER), {"user": "c", "position": "before"}, "target.position"),
        (SEQ_DOC, _spec(RETURN, to="step"), {}, "target.step"),
        (SEQ_DOC, _spec(RETURN, to="step"), {"step": "0"}, "target.step"),
        (SEQ_DOC, _spec(RETURN, to="step"), {"step": True}, "target.step"),
        (SEQ_DOC, _spec(RETURN, to="initiator"), {"step": 0}, "target.step"),
        (SEQ_DOC, {"id": "ok", "label": "ok", "decision": "approve"}, {"user": "c"}, "target.user"),
        (SEQ_DOC, _spec(NEUTRAL), {"x": 1}, "target.x"),
    ],
)
def test_bad_targets_name_the_field(
    doc: dict[str, Any], spec: dict[str, Any], target: Any, path: str
) -> None:
    with pytest.raises(InvalidField) as e:
        parse_target(doc, spec, target)
    assert e.value.field == path


def test_good_targets() -> None:
    assert parse_target(SEQ_DOC, _spec(TRANSFER), {"user": "c"}) == Target(user="c")
    assert parse_target(SEQ_DOC, _spec(ADD_SIGNER), {"user": "c", "position": "before"}) == (
        Target(user="c", position="before")
    )
    assert parse_target(ALL_DOC, _spec(ADD_SIGNER), {"user": "c"}) == Target(user="c")
    assert parse_target(SEQ_DOC, _spec(RETURN, to="step"), {"step": 0}) == Target(to="step", step=0)
    assert parse_target(SEQ_DOC, _spec(RETURN, to="initiator"), None) == Target(to="initiator")
    assert parse_target(SEQ_DOC, {"id": "ok", "label": "ok", "decision": "approve"}, {}) is None
