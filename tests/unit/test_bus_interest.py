"""Routing by interest: a conversation is subscribed exactly while a local member is online."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.bus.interest import Change, Interest, Overheard

USERS = ["u1", "u2", "u3"]
CONVS = ["c1", "c2", "c3"]


def test_first_member_subscribes_last_member_unsubscribes() -> None:
    interest = Interest()
    assert set(interest.add_user("u1", ["c1", "c2"]).subscribe) == {"c1", "c2"}
    assert interest.add_user("u2", ["c2"]).subscribe == ()
    assert interest.remove_user("u1").unsubscribe == ("c1",)
    assert interest.remove_user("u2").unsubscribe == ("c2",)
    assert interest.conversations() == []


def test_membership_change_adds_and_removes_local_members_only() -> None:
    interest = Interest()
    interest.add_user("u1", [])
    change = interest.set_members("c1", ["u1", "remote"])
    assert change.subscribe == ("c1",)
    assert interest.local_members("c1") == {"u1"}
    change = interest.set_members("c1", ["remote"])
    assert change.unsubscribe == ("c1",)
    assert interest.remove_user("u1").unsubscribe == ()


def test_a_second_session_of_the_same_user_changes_nothing() -> None:
    interest = Interest()
    interest.add_user("u1", ["c1"])
    assert interest.add_user("u1", ["c1", "c9"]).subscribe == ()


ops: st.SearchStrategy[list[tuple[str, str, frozenset[str]]]] = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(USERS), st.sets(st.sampled_from(CONVS))),
        st.tuples(st.just("remove"), st.sampled_from(USERS), st.just(frozenset())),
        st.tuples(st.just("refresh"), st.sampled_from(USERS), st.just(frozenset())),
        st.tuples(st.just("members"), st.sampled_from(CONVS), st.sets(st.sampled_from(USERS))),
        st.tuples(st.just("missed"), st.sampled_from(CONVS), st.sets(st.sampled_from(USERS))),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_subscriptions_always_equal_conversations_with_an_online_member(
    steps: list[tuple[str, str, frozenset[str]]],
) -> None:
    interest = Interest()
    subscribed: set[str] = set()
    membership: dict[str, set[str]] = {c: set() for c in CONVS}
    online: set[str] = set()
    missed = False  # a membership change happened that the node did not hear of
    for op, key, values in steps:
        if op == "add":
            if key in online:
                continue
            online.add(key)
            convs = {c for c in CONVS if key in membership[c]}
            change = interest.add_user(key, convs)
        elif op == "remove":
            online.discard(key)
            change = interest.remove_user(key)
        elif op == "refresh":  # after a reconnect: every local user's conversations re-read
            subs: set[str] = set()
            unsubs: set[str] = set()
            for user in sorted(online):
                one = interest.refresh_user(user, {c for c in CONVS if user in membership[c]})
                assert not subs & set(one.subscribe) and not unsubs & set(one.unsubscribe)
                subs |= set(one.subscribe)
                unsubs |= set(one.unsubscribe)
            change = Change(tuple(subs - unsubs), tuple(unsubs - subs))
            missed = False
        elif op == "members":
            membership[key] = set(values)
            change = interest.set_members(key, values)
        else:  # a membership change this node did not hear of (Redis was away)
            membership[key] = set(values)
            missed = True
            continue
        assert not subscribed & set(change.subscribe), "subscribed twice"
        subscribed |= set(change.subscribe)
        assert set(change.unsubscribe) <= subscribed, "unsubscribed what was not subscribed"
        subscribed -= set(change.unsubscribe)
        assert subscribed == set(interest.conversations())
        if not missed:
            assert subscribed == {c for c in CONVS if membership[c] & online}


def test_overheard_collects_announcements_only_while_a_read_is_open() -> None:
    log = Overheard()
    log.heard("before", 0)  # no read open: nobody needs it
    token = log.start()
    log.heard("c1", 0)
    log.heard("c2", None)
    assert log.finish(token) == {"c1": 0, "c2": None}
    log.heard("after", 0)
    assert log.finish(token) == {}


def test_overheard_keeps_the_earliest_fill_point_of_a_conversation() -> None:
    log = Overheard()
    first, second = log.start(), log.start()
    log.heard("c", None)
    log.heard("c", 7)
    log.heard("c", 3)
    log.heard("c", None)
    assert log.finish(first) == {"c": 3}
    assert log.finish(second) == {"c": 3}


def test_convs_of_is_a_copy_of_what_the_user_is_known_to_be_in() -> None:
    interest = Interest()
    interest.add_user("u1", ["c1"])
    interest.set_members("c2", ["u1", "u2"])
    mine = interest.convs_of("u1")
    assert mine == {"c1", "c2"} and interest.convs_of("nobody") == set()
    mine.add("c3")
    assert interest.convs_of("u1") == {"c1", "c2"}
