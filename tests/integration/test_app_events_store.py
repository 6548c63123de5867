"""The store side of app events (schema 10), on SQLite and PostgreSQL alike.

Uses the store contract's backends (``store_factory`` of test_store_contract):
an app's subscriptions round-trip; events join the outbox once per
(subject, ``event_id``), with a timer's "done" mark or on their own; they
never count as a card's pending callbacks; a ``read`` reports where the
cursor was before it.
"""

from __future__ import annotations

from typing import cast

import pytest

from cards.service import FullStore
from imserver.store.records import AppRecord, CardChange, NewCard, NewMessage, OutboxEntry
from tests.integration import test_store_contract as contract

T0 = contract.T0
#: The store contract's backends (SQLite, PostgreSQL), as this module's fixture too.
store_factory = contract.store_factory


@pytest.fixture
async def store(store_factory: contract.StoreFactory) -> FullStore:
    """A fresh store of each backend; both implement the whole interface (``FullStore``)."""
    return cast(FullStore, await store_factory.open())


SECRET = "s" * 32


def event(card_id: str, event_id: str, name: str = "overdue") -> OutboxEntry:
    payload = {"type": "event", "event": name, "event_id": event_id, "card_id": card_id}
    return OutboxEntry("oa", card_id, event_id, payload, kind="event")


async def make_card(
    s: FullStore, card_id: str = "c1", timers: tuple[tuple[str, int], ...] = ()
) -> None:
    await s.upsert_app(AppRecord("oa", "OA", SECRET, "http://127.0.0.1:9/cb", ("*",)), T0)
    doc = {"out_track_id": card_id, "title": "t", "fields": [], "actions": []}
    await s.create_card(
        NewCard(card_id, "oa", doc, {"state": "open"}, (), ("alice",), T0, timers), [], []
    )


async def test_subscriptions_round_trip_and_default_to_none(store: FullStore) -> None:
    s = store
    await s.upsert_app(AppRecord("plain", "", SECRET, "", ("*",)), T0)
    await s.upsert_app(AppRecord("oa", "", SECRET, "", ("*",), events=("overdue", "card_read")), T0)
    assert (await s.get_app("plain")).events == ()
    assert (await s.get_app("oa")).events == ("overdue", "card_read")
    listed = {a.app.app_id: a.app.events for a in await s.list_apps()}
    assert listed == {"oa": ("overdue", "card_read"), "plain": ()}
    await s.upsert_app(AppRecord("oa", "", SECRET, "", ("*",)), T0 + 1)  # replaced: none now
    assert (await s.get_app("oa")).events == ()


async def test_events_are_enqueued_once_per_event_id(store: FullStore) -> None:
    s = store
    await make_card(s)
    assert await s.enqueue_events([event("c1", "ev_a"), event("c1", "ev_b")], T0) == 2
    assert await s.enqueue_events([event("c1", "ev_a"), event("c1", "ev_c")], T0 + 5) == 1
    assert await s.enqueue_events([], T0) == 0
    claimed = await s.claim_callbacks(T0 + 10, 1000, 10)
    assert sorted(i.action_id for i in claimed) == ["ev_a", "ev_b", "ev_c"]
    assert {i.kind for i in claimed} == {"event"}
    assert next(i for i in claimed if i.action_id == "ev_a").payload["event"] == "overdue"
    # Events of a notice (no card row) are stored the same way.
    assert await s.enqueue_events([event("nt_1", "ev_n", "delivered")], T0) == 1
    assert (await s.get_callback("nt_1", "ev_n")).kind == "event"


async def test_events_never_count_as_pending_callbacks(store: FullStore) -> None:
    s = store
    await make_card(s)
    await s.enqueue_events([event("c1", "ev_a")], T0)
    assert await s.pending_callbacks("c1") == 0
    card = await s.get_card("c1")
    action = OutboxEntry("oa", "c1", "act-1", {"type": "card.action"})
    saved = await s.save_card(
        CardChange(
            card_id="c1",
            expected_version=card.version,
            doc=card.doc,
            approval=card.approval,
            callback="pending",
            pending=(),
            now=T0 + 1,
            outbox=action,
        )
    )
    assert saved is not None
    assert await s.pending_callbacks("c1") == 1
    assert (await s.get_callback("c1", "act-1")).kind == "action"


async def test_a_timer_finishes_with_its_events_in_one_write(store: FullStore) -> None:
    s = store
    await make_card(s, timers=(("overdue", T0 + 100),))
    [timer] = await s.claim_timers(T0 + 100, 1000, 10)
    await s.finish_timer(timer.id, [event("c1", "ev_t")], T0 + 100)
    assert await s.claim_timers(T0 + 5000, 1000, 10) == []  # done
    [item] = await s.claim_callbacks(T0 + 100, 1000, 10)
    assert (item.action_id, item.kind, item.next_at) == ("ev_t", "event", T0 + 100)
    await s.finish_timer(timer.id, [event("c1", "ev_t")], T0 + 200)  # again: still one
    assert len(await s.list_callbacks("pending", 10)) == 1


async def test_a_read_reports_the_cursor_before_it(store: FullStore) -> None:
    s = store
    await make_card(s)
    conv = "n:oa:alice"
    msgs = [NewMessage(conv, "app:oa", "app", "notice", {"n": i}, T0) for i in range(3)]
    await s.deliver_notice(msgs, [(conv, "alice", "OA")], T0)
    first = await s.move_read_cursor(conv, "alice", 2)
    assert (first.before, first.seq, first.moved) == (0, 2, True)
    second = await s.move_read_cursor(conv, "alice", 3)
    assert (second.before, second.seq, second.moved) == (2, 3, True)
    still = await s.move_read_cursor(conv, "alice", 1)
    assert (still.before, still.seq, still.moved) == (3, 3, False)
