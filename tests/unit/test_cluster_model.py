"""The cluster benchmark's cost model: the fit recovers known costs, the projection adds up."""

from __future__ import annotations

import pytest

from benchmarks.cluster_model import CostModel, NodeWindow, checks, fit, project, sender_cost

A, B, S, C = 9.0, 60.0, 400.0, 2000.0  # µs per delivery, per message heard, per send; µs/s idle


def window(node: int, deliveries: int, heard: int, sent: int, seconds: float = 10.0) -> NodeWindow:
    """A node whose CPU is exactly what the model says (no noise)."""
    cpu = A * deliveries + B * heard + S * sent + C * seconds
    return NodeWindow("p", node, deliveries, heard, sent, cpu, seconds, C)


def test_fit_recovers_the_costs_from_a_third_of_a_group_and_a_lone_member() -> None:
    receivers = [window(1, 100 * 500, 500, 0), window(2, 100 * 500, 500, 0), window(1, 500, 500, 0)]
    sender = window(0, 101 * 500, 500, 500)
    model = fit(receivers, sender, [C, C * 0.8])
    assert model.a == pytest.approx(A)
    assert model.b == pytest.approx(B)
    assert model.s == pytest.approx(S)
    assert model.c == C  # the largest node's idle cost: the projection is conservative
    assert all(abs(row["error"]) < 1e-9 for row in checks(model, [*receivers, sender]))


def test_windows_with_one_ratio_cannot_separate_a_from_b() -> None:
    same = [window(1, 100 * 500, 500, 0), window(2, 100 * 500, 500, 0)]
    with pytest.raises(ValueError, match="do not separate a from b"):
        fit(same, window(0, 101 * 500, 500, 500), [C])


def test_a_sending_node_is_not_a_receiver_window() -> None:
    with pytest.raises(ValueError, match="must not have sent"):
        fit([window(0, 500, 500, 500), window(1, 500, 500, 0)], window(0, 500, 500, 500), [C])
    with pytest.raises(ValueError, match="sent nothing"):
        sender_cost(A, B, window(1, 500, 500, 0))


def test_projection_spreads_deliveries_and_sends_but_every_node_hears_every_message() -> None:
    model = CostModel(A, B, S, C)
    doc = project(model, deliveries_per_message=301, rate=50.0, idle_node_us_per_message=0.5)
    rows = {row["nodes"]: row for row in doc["rows"]}
    for n, row in rows.items():
        per_message = A * 301 / n + B + S / n
        assert row["node_us_per_message"] == pytest.approx(per_message, abs=0.05)
        max_rate = (1e6 - C) / per_message
        assert row["max_msgs_per_s"] == pytest.approx(max_rate, abs=0.05)
        assert row["deliveries_per_s_cluster"] == round(max_rate * 301)
        # Other nodes' own traffic: ~nothing with interest routing, b each without it.
        assert row["cross_traffic_us_per_s"] == pytest.approx((n - 1) * 50 * 0.5)
        assert row["cross_traffic_us_per_s_without_routing"] == pytest.approx((n - 1) * 50 * B)
    # More nodes: less CPU per node per message, more deliveries in the cluster,
    # bounded by b (every node hears every message of the group).
    assert rows[3]["node_us_per_message"] < rows[1]["node_us_per_message"]
    assert rows[32]["deliveries_per_s_cluster"] > rows[3]["deliveries_per_s_cluster"]
    assert all(row["max_msgs_per_s"] < doc["single_group_limit_msgs_per_s"] for row in doc["rows"])
    assert doc["single_group_limit_msgs_per_s"] == pytest.approx(1e6 / B, abs=0.05)
