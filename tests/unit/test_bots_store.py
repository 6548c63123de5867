"""The bot store: idempotent events and actions, durable outboxes (a real SQLite file)."""

from __future__ import annotations

import time
from pathlib import Path

from bots.runtime.model import BotEvent
from bots.runtime.outbox import LaneWorker
from bots.runtime.store import CARD_LANE, FORWARD_LANE, BotStore


def ev(eid: str) -> BotEvent:
    return BotEvent(eid, "oa.request", {"x": "值"}, time.time())


def test_an_event_is_accepted_once_and_survives_reopening(tmp_path: Path) -> None:
    store = BotStore(tmp_path / "b.sqlite3")
    op = {"op": "push", "event_id": "e1", "card": {}, "users": ["li"], "groups": []}
    assert store.accept_event("oa", ev("e1"), [("push:e1", op)], hold_s=0)
    assert not store.accept_event("oa", ev("e1"), [("push:e1", op)], hold_s=0)
    assert store.accept_event("other", ev("e1"), [], hold_s=0)  # keyed per bot
    store.close()
    store = BotStore(tmp_path / "b.sqlite3")  # what a restart sees
    (item,) = store.due("oa", CARD_LANE)
    assert item.op == op and item.key == "push:e1"
    assert store.event("oa", "e1") == BotEvent("e1", "oa.request", {"x": "值"}, item_time(store))
    assert store.event_state("oa", "e1") == {"state": "queued"}
    store.mark_done(item.id, {"card_id": "c_1"})
    assert store.due("oa", CARD_LANE) == []
    assert store.event_state("oa", "e1") == {"state": "delivered", "card_id": "c_1"}


def item_time(store: BotStore) -> float:
    found = store.event("oa", "e1")
    assert found is not None
    return found.received_at


def test_a_held_item_is_not_due_until_released(tmp_path: Path) -> None:
    store = BotStore(tmp_path / "b.sqlite3")
    store.accept_event("oa", ev("e1"), [("push:e1", {"event_id": "e1"})], hold_s=60)
    assert store.due("oa", CARD_LANE) == []
    held = store.item("oa", CARD_LANE, "push:e1")
    assert held is not None
    store.release(held.id)
    assert [i.key for i in store.due("oa", CARD_LANE)] == ["push:e1"]


def test_forget_event_removes_it_and_its_operations(tmp_path: Path) -> None:
    store = BotStore(tmp_path / "b.sqlite3")
    store.accept_event("oa", ev("e1"), [("push:e1", {"event_id": "e1"})], hold_s=0)
    store.forget_event("oa", "e1")
    assert store.event("oa", "e1") is None and store.counts("oa") == {}
    assert store.accept_event("oa", ev("e1"), [], hold_s=0)


def test_a_repeated_action_returns_the_first_update_and_forwards_once(tmp_path: Path) -> None:
    store = BotStore(tmp_path / "b.sqlite3")
    first = store.accept_action("oa", "a1", "ev-e1", {"d": 1}, {"status": {"text": "已同意"}})
    again = store.accept_action("oa", "a1", "ev-e1", {"d": 2}, {"status": {"text": "别的"}})
    assert first == again == {"status": {"text": "已同意"}}
    (item,) = store.due("oa", FORWARD_LANE)
    assert (item.key, item.op) == ("a1", {"d": 1})
    store.mark_retry(item.id, time.time() + 60, "HTTP 503")
    assert store.due("oa", FORWARD_LANE) == []
    assert store.counts("oa") == {"forward.pending": 1}


def test_backoff_grows_and_is_capped(tmp_path: Path) -> None:
    async def never(item: object) -> object:
        raise AssertionError("not called")

    worker = LaneWorker(
        BotStore(tmp_path / "b.sqlite3"), "oa", CARD_LANE, never,  # type: ignore[arg-type]
        backoff_initial_s=1.0, backoff_max_s=8.0,
    )  # fmt: skip
    assert 0.5 <= worker.backoff(0) <= 1.0 and 2.0 <= worker.backoff(2) <= 4.0
    assert all(4.0 <= worker.backoff(n) <= 8.0 for n in (3, 10, 1000))
