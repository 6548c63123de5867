"""Leases: how long a claimed card timer or DING is one node's before another may take it.

A node claims due work with a lease; if it dies before finishing, the work
waits until the lease runs out and is then claimed by any node. The lease is
configured (``cards.timer_lease_s``, ``chat.ding_lease_s``), and what the
world built from the config claims with is what these tests check, on the
real SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imserver.app import World, build_world
from imserver.config import load_config
from imserver.errors import ConfigError
from imserver.store.records import NewCard, NewMessage
from tests.postgres_support import PostgresUnavailable, drop_schema, fresh_dsn
from tests.support import make_test_config

BACKENDS = ["sqlite", "postgres"]
T0 = 1_764_150_000_000
TIMER_LEASE_S = 1.0
DING_LEASE_S = 0.4


@pytest.fixture(params=BACKENDS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    """A world built from a config with short leases; only its store is opened.

    Its loops are not started: each test drives ``run_once`` (or the store)
    itself, so nothing fires behind its back.
    """
    store: dict[str, Any] = {"backend": "sqlite"}
    schema = ""
    if request.param == "postgres":
        try:
            dsn, schema = fresh_dsn()
        except PostgresUnavailable as e:
            pytest.fail(str(e))
        store = {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 3}
    config = make_test_config(
        tmp_path,
        {
            "store": store,
            "bus": {"backend": "local"},
            "cards": {"timer_lease_s": TIMER_LEASE_S},
            "chat": {"ding_lease_s": DING_LEASE_S},
        },
    )
    w = build_world(config)
    await w.store.open()
    try:
        yield w
    finally:
        await w.store.close()
        if schema:
            drop_schema(schema)


def card_with_timer(card_id: str, fire_at: int, approval: dict[str, Any]) -> NewCard:
    doc = {"out_track_id": f"track-{card_id}", "title": "请审批", "due_at": None}
    return NewCard(card_id, "oa", doc, approval, ("li",), ("li",), T0, (("remind", fire_at),))


async def test_the_world_claims_timers_and_dings_with_the_configured_leases(world: World) -> None:
    assert world.deadlines.lease_ms == int(TIMER_LEASE_S * 1000)
    assert world.dings.lease_ms == int(DING_LEASE_S * 1000)


async def test_a_claimed_timer_is_claimable_again_exactly_when_the_lease_runs_out(
    world: World,
) -> None:
    store, lease = world.store, world.deadlines.lease_ms
    await store.create_card(card_with_timer("c1", T0 + 5, {"state": "open"}), [], [])
    (timer,) = await store.claim_timers(T0 + 10, lease, 10)
    assert await store.claim_timers(T0 + 10 + lease - 1, lease, 10) == []  # still held
    assert await store.next_timer_due() == T0 + 10 + lease  # when to look again
    (again,) = await store.claim_timers(T0 + 10 + lease, lease, 10)  # its node "died"
    assert again.id == timer.id


async def test_a_timer_whose_firing_failed_is_tried_again_after_the_configured_lease(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler of the world does the claiming; its firing fails (a stored card
    whose approval it cannot read stands for a node that died mid-firing)."""
    now = int(time.time() * 1000)
    await world.store.create_card(card_with_timer("c2", now - 1_000, {"state": "open"}), [], [])
    with caplog.at_level(logging.ERROR, logger="cards.deadlines"):
        assert await world.deadlines.run_once() == 1  # claimed; the firing raised
    assert any("failed" in r.getMessage() for r in caplog.records), caplog.text
    assert await world.deadlines.run_once() == 0  # held by the lease
    lease = world.deadlines.lease_ms
    due = await world.store.next_timer_due()  # the claim's time plus the configured lease
    assert due is not None and now + lease <= due <= int(time.time() * 1000) + lease
    await asyncio.sleep(max(0.0, due / 1000 - time.time()) + 0.05)
    assert await world.deadlines.run_once() == 1  # the lease ran out: tried again


async def test_due_dings_and_the_configured_lease(world: World) -> None:
    """PostgreSQL (several nodes) holds a claimed DING for the lease; SQLite (one
    process, which re-notifies right after reading) keeps it due until re-notified."""
    store, lease = world.store, world.dings.lease_ms
    await store.ensure_dm("dm:li:wang", "li", "wang", T0)
    ding = NewMessage(
        "dm:li:wang",
        "li",
        "d",
        "text",
        {"text": "DING"},
        T0,
        "ding1",
        ding_to=("wang",),
        ding_next_at=T0 + 5,
    )
    await store.append_message(ding)
    assert len(await store.due_dings(T0 + 10, lease, 10)) == 1
    held = await store.due_dings(T0 + 10 + lease - 1, lease, 10)
    if world.config.store.backend == "postgres":
        assert held == []
        assert await store.next_ding_due() == T0 + 10 + lease
        assert len(await store.due_dings(T0 + 10 + lease, lease, 10)) == 1
    else:
        assert len(held) == 1


@pytest.mark.parametrize("key", ["cards.timer_lease_s", "chat.ding_lease_s"])
@pytest.mark.parametrize("value", [0, -1.5])
def test_a_lease_that_is_not_positive_is_refused_naming_the_key(key: str, value: float) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as e:
        load_config(None, env={}, overrides={section: {name: value}})
    assert e.value.key == key
    assert "greater than 0" in e.value.reason


def test_leases_from_the_environment() -> None:
    config = load_config(
        None, env={"IMSERVER_CARDS_TIMER_LEASE_S": "15", "IMSERVER_CHAT_DING_LEASE_S": "7.5"}
    )
    assert (config.cards.timer_lease_s, config.chat.ding_lease_s) == (15.0, 7.5)
    defaults = load_config(None, env={})
    assert (defaults.cards.timer_lease_s, defaults.chat.ding_lease_s) == (60.0, 60.0)
