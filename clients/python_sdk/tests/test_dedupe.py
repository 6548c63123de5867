"""Unit tests for the pure per-conversation seq tracker."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver_sdk.dedupe import SeqStatus, SeqTracker

NEW, DUP, GAP = SeqStatus.NEW, SeqStatus.DUPLICATE, SeqStatus.GAP


def test_in_order_messages_are_new_and_advance_watermark() -> None:
    t = SeqTracker()
    assert [t.accept("c", s) for s in (1, 2, 3)] == [NEW, NEW, NEW]
    assert t.last("c") == 3
    assert t.highest("c") == 3
    assert not t.has_gap("c")
    assert t.missing("c") == []


def test_duplicates_at_or_below_watermark_are_dropped() -> None:
    t = SeqTracker()
    t.accept("c", 1)
    t.accept("c", 2)
    assert t.accept("c", 2) is DUP
    assert t.accept("c", 1) is DUP
    assert t.last("c") == 2


def test_status_truthiness_means_new() -> None:
    t = SeqTracker()
    assert t.accept("c", 1)
    assert not t.accept("c", 1)
    assert t.accept("c", 5)  # GAP is still a new message
    assert not t.accept("c", 5)


def test_gap_is_detected_and_filled() -> None:
    t = SeqTracker()
    assert t.accept("c", 1) is NEW
    assert t.accept("c", 4) is GAP
    assert t.has_gap("c")
    assert t.last("c") == 1
    assert t.highest("c") == 4
    assert t.missing("c") == [2, 3]
    assert t.accept("c", 4) is DUP  # held above the watermark: still a duplicate
    assert t.accept("c", 2) is NEW
    assert t.last("c") == 2
    assert t.missing("c") == [3]
    assert t.accept("c", 3) is NEW
    assert t.last("c") == 4  # watermark walked across the parked 4
    assert not t.has_gap("c")
    assert t.accept("c", 5) is NEW


def test_several_holes_fill_out_of_order() -> None:
    t = SeqTracker()
    for s in (3, 5, 7):
        assert t.accept("c", s) is GAP
    assert t.missing("c") == [1, 2, 4, 6]
    assert t.accept("c", 2) is GAP  # still below a hole (1 missing)
    assert t.accept("c", 1) is NEW
    assert t.last("c") == 3
    assert t.accept("c", 6) is GAP
    assert t.accept("c", 4) is NEW
    assert t.last("c") == 7
    assert not t.has_gap("c")


def test_first_message_above_one_is_a_gap() -> None:
    t = SeqTracker()
    assert t.accept("c", 42) is GAP
    assert t.last("c") == 0
    assert t.since() == {}


def test_conversations_are_independent() -> None:
    t = SeqTracker()
    t.accept("a", 1)
    t.accept("a", 2)
    t.accept("b", 1)
    assert t.accept("b", 2) is NEW
    assert t.accept("a", 2) is DUP
    assert (t.last("a"), t.last("b"), t.last("zzz")) == (2, 2, 0)
    assert set(t.conversations()) == {"a", "b"}


def test_since_is_the_contiguous_watermark() -> None:
    t = SeqTracker()
    for s in (1, 2, 3, 9):
        t.accept("dm:alice:bob", s)
    t.accept("g:x", 5)
    assert t.since() == {"dm:alice:bob": 3}


def test_contains() -> None:
    t = SeqTracker()
    t.accept("c", 1)
    t.accept("c", 3)
    assert t.contains("c", 1)
    assert not t.contains("c", 2)
    assert t.contains("c", 3)
    assert not t.contains("other", 1)


def test_advance_skips_unfillable_holes_and_absorbs_parked_seqs() -> None:
    t = SeqTracker()
    t.accept("c", 50)
    t.accept("c", 51)
    t.accept("c", 53)
    t.advance("c", 49)
    assert t.last("c") == 51
    assert t.missing("c") == [52]
    t.advance("c", 60)
    assert t.last("c") == 60
    assert not t.has_gap("c")
    t.advance("c", 10)  # never backwards
    assert t.last("c") == 60
    assert t.accept("c", 55) is DUP
    assert t.accept("c", 61) is NEW


def test_advance_to_zero_on_unknown_conv_records_nothing() -> None:
    t = SeqTracker()
    t.advance("c", 0)
    assert t.since() == {}
    assert t.last("c") == 0


def test_forget() -> None:
    t = SeqTracker()
    t.accept("c", 1)
    t.accept("c", 3)
    t.forget("c")
    assert t.last("c") == 0
    assert not t.has_gap("c")
    assert t.accept("c", 1) is NEW


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, None])
def test_invalid_seq_is_rejected(bad: object) -> None:
    t = SeqTracker()
    with pytest.raises(ValueError):
        t.accept("c", bad)  # type: ignore[arg-type]
    assert t.last("c") == 0


@pytest.mark.parametrize("seed", range(30))
def test_random_delivery_with_duplicates_converges(seed: int) -> None:
    """At-least-once, out-of-order delivery of 1..n: each seq is new exactly
    once and the watermark ends at n with no gaps."""
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    deliveries = list(range(1, n + 1)) + [rng.randint(1, n) for _ in range(rng.randint(0, 40))]
    rng.shuffle(deliveries)
    t = SeqTracker()
    new_count = 0
    for s in deliveries:
        status = t.accept("c", s)
        if status:
            new_count += 1
        # Invariant: watermark is exactly the contiguous prefix delivered so far.
        assert not t.has_gap("c") or t.missing("c")
    assert new_count == n
    assert t.last("c") == n
    assert not t.has_gap("c")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=120))
def test_property_matches_a_naive_model(seqs: list[int]) -> None:
    """Compare against the obvious (slow) model: a set of seen seqs."""
    t = SeqTracker()
    seen: set[int] = set()
    for s in seqs:
        status = t.accept("c", s)
        assert bool(status) == (s not in seen)
        seen.add(s)
        mark = t.last("c")
        # The watermark is the largest k with 1..k all seen.
        expected = 0
        while expected + 1 in seen:
            expected += 1
        assert mark == expected
        assert t.has_gap("c") == any(x > mark for x in seen)
        assert t.highest("c") == max(seen)
        assert t.missing("c") == [x for x in range(mark + 1, max(seen)) if x not in seen]
        if status is SeqStatus.NEW:
            assert s <= mark
        elif status is SeqStatus.GAP:
            assert s > mark + 1
