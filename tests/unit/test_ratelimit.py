from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.ratelimit import RateLimiter


def test_burst_then_refill() -> None:
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.take("u", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.take("u", 0.0)
    assert wait == pytest.approx(0.5)
    assert rl.take("u", 0.25) == pytest.approx(0.25)  # half a token refilled
    assert rl.take("u", 0.5) == 0.0
    assert rl.take("v", 0.5) == 0.0  # keys are independent


def test_idle_refill_caps_at_burst() -> None:
    rl = RateLimiter(rate=10.0, burst=2)
    assert rl.take("u", 0.0) == 0.0
    assert [rl.take("u", 100.0) for _ in range(3)][2] > 0  # only 2 tokens after a long idle


def test_memory_is_bounded_and_eviction_forgives() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_keys=10)
    assert rl.take("a", 0.0) == 0.0
    assert rl.take("a", 0.0) > 0
    for i in range(20):
        rl.take(f"k{i}", 0.0)
    assert len(rl._buckets) == 10
    assert rl.take("a", 0.0) == 0.0  # "a" was evicted: a fresh bucket


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.5, 50),
    st.integers(1, 20),
    st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    rl = RateLimiter(rate, burst)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        if rl.take("u", now) == 0.0:
            allowed += 1
    assert allowed <= burst + rate * now + 1e-6
