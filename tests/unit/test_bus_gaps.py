"""The seq tracker: whatever the bus does to a seq stream, each seq is delivered once, in order."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.bus.gaps import ConvSeq, Heard, fill


def run_stream(total: int, heard: list[int], page: int = 3, max_pages: int = 100) -> list[int]:
    """Feed ``heard`` (any order, repeats, losses) to a tracker; the store holds 1..total.

    A seq is only published after it is committed, so when ``s`` is heard
    the store holds at least 1..s; here it holds everything up to the highest
    seq heard so far. A final reconnect fill stands for "after an outage the
    node fills what came after its last seq".
    """
    state = ConvSeq(0)
    out: list[int] = []
    committed = 0

    async def fetch(after: int, limit: int) -> list[int]:
        return list(range(after + 1, min(committed, after + limit) + 1))

    async def latest() -> int:
        return committed

    async def emit(page: list[int]) -> None:
        out.extend(page)

    async def main() -> None:
        nonlocal committed
        for seq in heard:
            committed = max(committed, seq)
            action = state.heard(seq)
            if action is Heard.DELIVER:
                out.append(seq)
            elif action is Heard.FILL:
                await fill(state, fetch, int, emit, latest, page=page, max_pages=max_pages)
        committed = total
        if state.start_fill():
            await fill(state, fetch, int, emit, latest, page=page, max_pages=max_pages)

    asyncio.run(main())
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.integers(min_value=1, max_value=max(n, 1)), max_size=80)
            if n
            else st.just([]),
        )
    )
)
def test_any_interleaving_duplication_or_loss_delivers_each_seq_once_in_order(
    case: tuple[int, list[int]],
) -> None:
    total, heard = case
    assert run_stream(total, heard) == list(range(1, total + 1))


def test_next_seq_is_delivered_from_the_payload() -> None:
    state = ConvSeq(4)
    assert state.heard(5) is Heard.DELIVER
    assert state.last == 5


def test_duplicates_and_late_seqs_are_dropped() -> None:
    state = ConvSeq(5)
    assert state.heard(5) is Heard.DROP
    assert state.heard(3) is Heard.DROP


def test_a_seq_past_a_gap_asks_for_a_fill_and_seqs_heard_meanwhile_are_left_to_it() -> None:
    state = ConvSeq(5)
    assert state.heard(7) is Heard.FILL
    assert state.heard(6) is Heard.DROP  # the running fill fetches it
    assert state.heard(8) is Heard.DROP
    assert state.wanted == 8


def test_seq_6_before_5_delivers_5_then_6() -> None:
    assert run_stream(6, [1, 2, 3, 4, 6, 5]) == [1, 2, 3, 4, 5, 6]


def test_a_huge_backlog_stops_at_the_bound_and_skips_to_the_latest() -> None:
    state = ConvSeq(0)
    out: list[int] = []

    async def fetch(after: int, limit: int) -> list[int]:
        return list(range(after + 1, min(1000, after + limit) + 1))

    async def latest() -> int:
        return 1000

    async def emit(page: list[int]) -> None:
        out.extend(page)

    async def main() -> None:
        assert state.heard(1000) is Heard.FILL
        outcome = await fill(state, fetch, int, emit, latest, page=10, max_pages=3)
        assert outcome.overflowed
        assert outcome.delivered == 30

    asyncio.run(main())
    assert out == list(range(1, 31))
    assert state.last == 1000 and not state.filling
    assert state.heard(1001) is Heard.DELIVER


def test_a_seq_heard_while_the_last_filled_page_is_delivered_does_not_overtake_it() -> None:
    """Delivering a filled page can wait (a card message's view is read per viewer):
    seq 3 heard meanwhile must not go out before seqs 1 and 2 (it waits for the fill)."""
    state = ConvSeq(0)
    out: list[int] = []
    committed = 2

    async def fetch(after: int, limit: int) -> list[int]:
        return list(range(after + 1, min(committed, after + limit) + 1))

    async def latest() -> int:
        return committed

    async def emit(page: list[int]) -> None:
        nonlocal committed
        await asyncio.sleep(0)  # the delivery awaits something
        committed = 3
        assert state.heard(3) is Heard.DROP  # seq 3 published meanwhile: left to the fill
        out.extend(page)

    async def main() -> None:
        assert state.heard(2) is Heard.FILL
        await fill(state, fetch, int, emit, latest, page=10, max_pages=5)

    asyncio.run(main())
    assert out == [1, 2, 3]
    assert not state.filling
