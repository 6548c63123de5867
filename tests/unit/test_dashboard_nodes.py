"""The node table: summaries parsed field by field, expired, bounded; a bad one changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imserver.bus.local import LocalBus
from imserver.dashboard.nodes import (
    EXPIRE_S,
    TOPIC_NODES,
    MalformedSummary,
    NodeBeacon,
    NodeSummary,
    NodeTable,
    cluster_view,
    parse_summary,
)


def summary(node: Any = "a/1", at: Any = 1000.0, **extra: Any) -> dict[str, Any]:
    s = NodeSummary(
        node=node,
        at=at,
        connections=3,
        users=2,
        msgs_s=1.5,
        deliveries_s=4.0,
        msgs_total=10,
        deliveries_total=20,
        send_ack_ms={"p50": 0.4, "p95": 2.0, "p99": None},
    ).to_wire()
    s.update(extra)
    return s


def test_a_summary_round_trips() -> None:
    wire = summary()
    parsed = parse_summary(wire)
    assert parsed.to_wire() == wire
    assert parsed.send_ack_ms == {"p50": 0.4, "p95": 2.0, "p99": None}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "x",
        summary(v=2),
        summary(node=""),
        summary(node="n" * 201),
        summary(node=7),
        summary(connections=-1),
        summary(connections=True),
        summary(users="2"),
        summary(msgs_s=float("nan")),
        summary(deliveries_s=float("inf")),
        summary(at=None),
        summary(send_ack_ms=[1, 2, 3]),
        summary(send_ack_ms={"p50": "fast"}),
        {k: v for k, v in summary().items() if k != "msgs_total"},
    ],
)
def test_a_malformed_summary_is_counted_and_changes_nothing(bad: Any) -> None:
    with pytest.raises(MalformedSummary):
        parse_summary(bad)
    table = NodeTable()
    table.heard(summary("good/1"), now=0.0)
    assert table.heard(bad, now=1.0) is None
    assert table.malformed == 1
    assert [s.node for s in table.live(now=1.0)] == ["good/1"]


def test_nodes_not_heard_from_expire() -> None:
    table = NodeTable()
    table.heard(summary("a/1"), now=0.0)
    table.heard(summary("b/2"), now=5.0)
    assert [s.node for s in table.live(now=EXPIRE_S)] == ["a/1", "b/2"]
    assert [s.node for s in table.live(now=EXPIRE_S + 0.1)] == ["b/2"]
    table.heard(summary("b/2", at=1002.0), now=14.0)  # heard again: kept longer
    assert [s.node for s in table.live(now=14.0 + EXPIRE_S)] == ["b/2"]
    assert table.live(now=14.1 + EXPIRE_S) == []


def test_an_older_summary_arriving_late_is_ignored() -> None:
    table = NodeTable()
    table.heard(summary("a/1", at=1002.0, connections=5), now=0.0)
    assert table.heard(summary("a/1", at=1000.0, connections=1), now=1.0) is None
    assert table.live(now=1.0)[0].connections == 5


def test_the_table_is_bounded() -> None:
    table = NodeTable(max_nodes=3)
    for i in range(3):
        table.heard(summary(f"n/{i}"), now=float(i))
    assert table.heard(summary("n/late"), now=3.0) is None  # full: refused, counted
    assert table.refused == 1
    table.heard(summary("n/1", at=1001.0), now=3.0)  # a known node still updates
    assert table.heard(summary("n/late"), now=EXPIRE_S + 0.5) is not None  # n/0 expired
    assert [s.node for s in table.live(now=EXPIRE_S + 0.5)] == ["n/1", "n/2", "n/late"]


@given(st.lists(st.tuples(st.integers(0, 400), st.floats(0, 100)), max_size=600))
def test_never_more_than_max_nodes(heard: list[tuple[int, float]]) -> None:
    table = NodeTable(max_nodes=256)
    for node, now in sorted(heard, key=lambda h: h[1]):
        table.heard(summary(f"n/{node}"), now)
        assert len(table.live(now)) <= 256


def test_cluster_totals_and_this_node_flag() -> None:
    nodes = [parse_summary(summary("a/1")), parse_summary(summary("b/2", connections=7))]
    view = cluster_view(nodes, this_node="b/2")
    assert [(n["node"], n["self"]) for n in view["nodes"]] == [("a/1", False), ("b/2", True)]
    assert view["cluster"] == {
        "nodes": 2,
        "connections": 10,
        "users": 4,
        "msgs_s": 3.0,
        "deliveries_s": 8.0,
        "msgs_total": 20,
        "deliveries_total": 40,
    }


async def test_the_beacon_files_its_own_and_other_nodes_summaries() -> None:
    bus = LocalBus()
    snap = {
        "node": "me/1",
        "at": 1000.0,
        "connections": 2,
        "users": 1,
        "rates": {"messages": 0.5, "deliveries": 1.0},
        "totals": {"messages": 3.0, "deliveries": 6.0},
        "latency_ms": {"send_ack": {"p50": 1.0, "p95": 2.0, "p99": 3.0}},
    }
    now = [0.0]
    beacon = NodeBeacon(bus, lambda: snap, every_s=3600, clock=lambda: now[0])
    await beacon.start()
    await asyncio.sleep(0)  # its first publication goes out at once
    try:
        await bus.publish(TOPIC_NODES, summary("other/2"))
        await bus.publish(TOPIC_NODES, {"v": 1, "node": "broken"})  # ignored
        view = beacon.view("me/1")
        assert [n["node"] for n in view["nodes"]] == ["me/1", "other/2"]
        assert view["cluster"]["connections"] == 5
        assert beacon.table.malformed == 1
        now[0] = EXPIRE_S + 1  # the other node falls silent; this one republishes
        await beacon.publish_once()
        assert [n["node"] for n in beacon.view("me/1")["nodes"]] == ["me/1"]
    finally:
        await beacon.stop()
