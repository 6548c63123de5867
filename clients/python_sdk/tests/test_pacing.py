"""RequestPacer: the client-side copy of the server's token bucket (pure, fake clock)."""

from __future__ import annotations

from imserver_sdk.pacing import RequestPacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unconfigured_pacer_never_waits() -> None:
    pacer = RequestPacer(FakeClock())
    assert [pacer.reserve() for _ in range(1000)] == [0.0] * 1000


def test_burst_goes_at_once_then_the_steady_rate() -> None:
    clock = FakeClock()
    pacer = RequestPacer(clock)
    pacer.configure(10.0, 3)
    delays = [round(pacer.reserve(), 6) for _ in range(6)]
    assert delays == [0.0, 0.0, 0.0, 0.1, 0.2, 0.3]  # each caller gets its own slot


def test_an_idle_pacer_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    pacer = RequestPacer(clock)
    pacer.configure(10.0, 3)
    for _ in range(3):
        pacer.reserve()
    clock.now += 60.0  # a long pause does not bank more than the burst
    delays = [round(pacer.reserve(), 6) for _ in range(4)]
    assert delays == [0.0, 0.0, 0.0, 0.1]


def test_pause_holds_every_later_slot_and_allows_no_burst_after_it() -> None:
    clock = FakeClock()
    pacer = RequestPacer(clock)
    pacer.configure(10.0, 5)
    pacer.pause(0.5)
    delays = [round(pacer.reserve(), 6) for _ in range(3)]
    assert delays == [0.5, 0.6, 0.7]


def test_pause_works_before_the_budget_is_known() -> None:
    clock = FakeClock()
    pacer = RequestPacer(clock)
    pacer.pause(0.25)
    assert pacer.reserve() == 0.25
    clock.now += 0.25
    assert pacer.reserve() == 0.0


def test_nonsense_budget_turns_pacing_off() -> None:
    pacer = RequestPacer(FakeClock())
    pacer.configure(0.0, 10)
    assert pacer.reserve() == 0.0
    pacer.configure(None, None)
    assert pacer.reserve() == 0.0
