"""Two nodes on one PostgreSQL database: what must hold when they write at once.

Each "node" is its own ``PostgresStore`` with its own pool and writer, as two
imserver processes would be; they share only the database. Nothing here is
mocked: the races are real transactions racing in a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from imserver.store.migrations import SCHEMA_HISTORY
from imserver.store.postgres import PostgresStore
from imserver.store.records import (
    CardChange,
    MembershipChange,
    NewCard,
    NewMessage,
    OutboxEntry,
)
from tests.postgres_support import (
    PostgresUnavailable,
    applied_migrations,
    drop_schema,
    fresh_dsn,
)

T0 = 1_764_150_000_000
GROUP = "g:race00001"
USERS = [f"u{i:02d}" for i in range(20)]


@dataclass
class Nodes:
    dsn: str
    a: PostgresStore
    b: PostgresStore

    def node(self, i: int) -> PostgresStore:
        return self.a if i % 2 == 0 else self.b


@pytest.fixture
def dsn() -> Iterator[str]:
    try:
        url, schema = fresh_dsn()
    except PostgresUnavailable as e:
        pytest.fail(str(e))
    yield url
    drop_schema(schema)


@pytest.fixture
async def nodes(dsn: str) -> AsyncIterator[Nodes]:
    a = PostgresStore(dsn, min_pool=1, max_pool=4)
    b = PostgresStore(dsn, min_pool=1, max_pool=4)
    await asyncio.gather(a.open(), b.open())  # both migrate at once: one applies, one waits
    await a.upsert_users([(u, u) for u in USERS], T0)
    yield Nodes(dsn, a, b)
    await asyncio.gather(a.close(), b.close())


def approval_card(card_id: str, approvers: list[str]) -> NewCard:
    doc = {"out_track_id": f"track-{card_id}", "title": "请审批", "due_at": None}
    approval = {"mode": "any", "approvers": approvers, "state": "open"}
    return NewCard(card_id, "oa", doc, approval, tuple(approvers), tuple(approvers), T0)


def decision(card_id: str, approver: str, version: int = 1) -> CardChange:
    return CardChange(
        card_id=card_id,
        expected_version=version,
        doc={"out_track_id": f"track-{card_id}", "title": "请审批", "decided_by": approver},
        approval={"mode": "any", "state": "approved", "by": approver},
        callback="pending",
        pending=(),
        now=T0 + 1,
        outbox=OutboxEntry("oa", card_id, f"act-{approver}", {"by": approver}),
    )


async def test_three_nodes_starting_at_once_migrate_once(dsn: str) -> None:
    stores = [PostgresStore(dsn, min_pool=1, max_pool=2) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert applied_migrations(dsn) == [v for v, _ in SCHEMA_HISTORY]
        await stores[2].upsert_users([("alice", "A")], T0)
        assert await stores[0].existing_users(["alice"]) == {"alice"}
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_one_of_twenty_approvers_on_two_nodes_wins(nodes: Nodes) -> None:
    await nodes.a.create_card(approval_card("c1", USERS), [], [])

    results = await asyncio.gather(
        *(nodes.node(i).save_card(decision("c1", u)) for i, u in enumerate(USERS))
    )

    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    (winner,) = winners
    assert winner.version == 2
    for store in (nodes.a, nodes.b):
        card = await store.get_card("c1")
        assert card is not None
        assert card.version == 2 and card.approval == winner.approval
    pending = await nodes.b.list_callbacks("pending", 100)
    assert [(p.card_id, p.action_id) for p in pending] == [("c1", f"act-{winner.approval['by']}")]
    assert await nodes.a.todo_cards(USERS[0], 10) == ([], 0)


async def test_concurrent_appends_from_two_nodes_are_gapless_and_deduplicated(
    nodes: Nodes,
) -> None:
    notice = NewMessage(GROUP, USERS[0], "d", "system", {"event": "group_created"}, T0)
    await nodes.a.create_group(GROUP, "Race", USERS[0], USERS[1:], notice)  # seq 1
    # 100 distinct messages, each sent twice: once through each node, at once.
    sends = [
        NewMessage(GROUP, USERS[i % 20], "d", "text", {"text": f"m{i}"}, T0, f"c{i}")
        for i in range(100)
    ]
    results = await asyncio.gather(
        *(nodes.a.append_message(m) for m in sends),
        *(nodes.b.append_message(m) for m in sends),
    )

    by_cmid: dict[str, set[int]] = {}
    for r in results:
        assert r.message.client_msg_id is not None
        by_cmid.setdefault(r.message.client_msg_id, set()).add(r.message.seq)
    assert all(len(seqs) == 1 for seqs in by_cmid.values())  # both sends answered alike
    assert sum(not r.duplicate for r in results) == 100  # one of each pair stored
    stored = await nodes.b.messages_after(GROUP, 1, 1000)
    assert [m.seq for m in stored] == list(range(2, 102))  # gapless, no duplicates
    assert {m.client_msg_id for m in stored} == {f"c{i}" for i in range(100)}
    conv = await nodes.a.get_conversation(GROUP)
    assert conv is not None and conv.last_seq == 101


async def test_group_change_and_appends_on_two_nodes_stay_ordered(nodes: Nodes) -> None:
    notice = NewMessage(GROUP, USERS[0], "d", "system", {"event": "group_created"}, T0)
    await nodes.a.create_group(GROUP, "Race", USERS[0], USERS[1:5], notice)
    change = MembershipChange(add=((USERS[6], "member"),))
    added = NewMessage(GROUP, USERS[0], "d", "system", {"event": "member_added"}, T0)
    texts = [
        NewMessage(GROUP, USERS[1], "d", "text", {"text": str(i)}, T0, f"t{i}") for i in range(30)
    ]
    await asyncio.gather(
        *(nodes.node(i).append_message(m) for i, m in enumerate(texts)),
        nodes.b.change_group(GROUP, change, added, max_members=100),
    )
    seqs = [m.seq for m in await nodes.a.messages_after(GROUP, 0, 100)]
    assert seqs == list(range(1, 33))


async def _outbox_items(nodes: Nodes, n: int) -> None:
    for i in range(n):
        await nodes.a.create_card(approval_card(f"k{i:02d}", ["u00"]), [], [])
        assert await nodes.a.save_card(decision(f"k{i:02d}", "u00")) is not None


async def test_callbacks_claimed_by_two_nodes_are_each_claimed_once(nodes: Nodes) -> None:
    await _outbox_items(nodes, 40)
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    async def drain(name: str, store: PostgresStore) -> None:
        while True:
            items = await store.claim_callbacks(T0 + 10, 60_000, 3)
            if not items:
                return
            claimed[name] += [item.id for item in items]

    await asyncio.gather(drain("a", nodes.a), drain("b", nodes.b))

    all_ids = {item.id for item in await nodes.a.list_callbacks("pending", 100)}
    assert len(all_ids) == 40
    assert not set(claimed["a"]) & set(claimed["b"])  # never one item on both nodes
    assert sorted(claimed["a"] + claimed["b"]) == sorted(all_ids)  # each claimed exactly once


async def test_a_dead_nodes_callback_lease_is_taken_over(nodes: Nodes) -> None:
    await _outbox_items(nodes, 3)
    taken = await nodes.a.claim_callbacks(T0 + 10, 1_000, 10)
    assert len(taken) == 3
    await nodes.a.close()  # node a dies holding the leases

    assert await nodes.b.claim_callbacks(T0 + 500, 1_000, 10) == []  # lease still live
    assert await nodes.b.next_callback_due() == T0 + 10 + 1_000
    later = await nodes.b.claim_callbacks(T0 + 1_010, 1_000, 10)
    assert sorted(i.id for i in later) == sorted(i.id for i in taken)


async def test_timers_are_claimed_once_and_taken_over_after_the_lease(nodes: Nodes) -> None:
    for i in range(10):
        card = approval_card(f"t{i}", ["u00"])
        await nodes.a.create_card(
            NewCard(
                card.id,
                card.app_id,
                card.doc,
                card.approval,
                card.pending,
                card.holders,
                card.now,
                timers=(("remind", T0 + 5),),
            ),
            [],
            [],
        )
    first_a, first_b = await asyncio.gather(
        nodes.a.claim_timers(T0 + 10, 1_000, 10), nodes.b.claim_timers(T0 + 10, 1_000, 10)
    )
    ids_a, ids_b = {t.id for t in first_a}, {t.id for t in first_b}
    assert not ids_a & ids_b and len(ids_a | ids_b) == 10
    assert await nodes.b.claim_timers(T0 + 500, 1_000, 10) == []
    for t in first_b:
        await nodes.b.finish_timer(t.id)
    retaken = await nodes.b.claim_timers(T0 + 1_011, 1_000, 10)  # a "died" holding its leases
    assert {t.id for t in retaken} == ids_a


async def test_due_dings_are_handed_to_one_node(nodes: Nodes) -> None:
    await nodes.a.ensure_dm("dm:u00:u01", "u00", "u01", T0)
    ding = NewMessage(
        "dm:u00:u01",
        "u00",
        "d",
        "text",
        {"text": "DING"},
        T0,
        "ding1",
        ding_to=("u01",),
        ding_next_at=T0 + 5,
    )
    await nodes.a.append_message(ding)
    due_a, due_b = await asyncio.gather(
        nodes.a.due_dings(T0 + 10, 1_000, 10), nodes.b.due_dings(T0 + 10, 1_000, 10)
    )
    assert len(due_a) + len(due_b) == 1  # re-notified by one node, not both


async def test_audit_appends_from_two_nodes_form_one_chain(nodes: Nodes) -> None:
    await asyncio.gather(
        *(
            nodes.node(i).audit.append(T0 + i, f"admin{i % 2}", "test.note", "", {"i": i})
            for i in range(100)
        )
    )
    result = await nodes.b.audit.verify()
    assert result.ok and result.checked == 100
    records = await nodes.a.audit.records(0, 1000)
    assert [r.seq for r in records] == list(range(1, 101))


async def test_a_refresh_token_presented_on_two_nodes_works_once(nodes: Nodes) -> None:
    await nodes.a.store_refresh_token("h" * 64, "u00", "pc", T0 + 60_000, T0)
    uses = await asyncio.gather(
        nodes.a.use_refresh_token("h" * 64, T0 + 1), nodes.b.use_refresh_token("h" * 64, T0 + 1)
    )
    assert sorted(u.outcome for u in uses if u is not None) == ["ok", "reused"]


async def test_a_deadlock_between_two_nodes_is_retried_not_failed(nodes: Nodes) -> None:
    """Two nodes lock two rows in opposite order: PostgreSQL aborts one, which runs again."""
    both_hold_one = asyncio.Barrier(2)
    runs = {"a": 0, "b": 0}

    def crossing(name: str, first: str, second: str) -> Any:
        async def job(conn: Any) -> str:
            runs[name] += 1
            bump = "UPDATE counters SET value = value + 1 WHERE name = $1"
            await conn.execute(bump, first)
            if runs[name] == 1:
                await both_hold_one.wait()  # each now holds the row the other wants
            await conn.execute(bump, second)
            return name

        return job

    done = await asyncio.wait_for(
        asyncio.gather(
            nodes.a._write(crossing("a", "card_gseq", "directory_sync")),
            nodes.b._write(crossing("b", "directory_sync", "card_gseq")),
        ),
        timeout=30,
    )
    assert list(done) == ["a", "b"]  # both succeeded
    assert sorted(runs.values()) == [1, 2]  # the deadlock victim ran a second time
    assert await nodes.a.begin_directory_sync() == 3  # both increments of each row stuck
