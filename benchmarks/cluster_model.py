"""The per-node cost model of a cluster fan-out, fitted from measured nodes (pure).

    CPU of a node = a·L + b·H + s·S + c·T

L: deliveries to the node's own sockets; H: messages it heard (every message
of a conversation with a member online on the node — the sending node hears
its own publications through Redis too); S: messages sent through the node
(parse, check, store, ack, publish); T: seconds (the idle cost ``c``: pings,
presence, timers). Interest routing is the claim that a message of a
conversation without a local member costs a node nothing: it is not in H.

Kept apart from the ``cluster`` scenario so the arithmetic can be checked
without running nodes (``tests/unit/test_cluster_model.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Cluster sizes the projection is tabulated for.
PROJECT_NODES = (1, 2, 3, 4, 8, 16, 32)
#: One core's CPU time per second, in µs.
CORE_US_PER_S = 1e6


@dataclass(frozen=True, slots=True)
class NodeWindow:
    """One node over one measured phase."""

    phase: str
    node: int
    local_deliveries: int
    heard: int
    sent: int
    cpu_us: float
    seconds: float
    idle_us_per_s: float

    @property
    def busy_us(self) -> float:
        """CPU beyond what the node spends idle over the same time."""
        return self.cpu_us - self.idle_us_per_s * self.seconds


@dataclass(frozen=True, slots=True)
class CostModel:
    a: float  # µs per local delivery
    b: float  # µs per message heard
    s: float  # µs per message sent through the node
    c: float  # µs per second idle (the largest node's)

    def predict_us(self, w: NodeWindow) -> float:
        return (
            self.a * w.local_deliveries
            + self.b * w.heard
            + self.s * w.sent
            + w.idle_us_per_s * w.seconds
        )

    def as_json(self) -> dict[str, float]:
        return {
            "a_us_per_local_delivery": round(self.a, 3),
            "b_us_per_message_heard": round(self.b, 2),
            "s_us_per_message_sent": round(self.s, 1),
            "c_us_per_s_idle": round(self.c, 1),
        }


def fit_receivers(receivers: Sequence[NodeWindow]) -> tuple[float, float]:
    """``a`` and ``b`` by least squares (no intercept) over nodes that sent nothing.

    Needs windows with different ratios of deliveries to messages heard
    (e.g. a third of a group's members, and a single member), else a and b
    cannot be told apart.
    """
    if any(w.sent for w in receivers):
        raise ValueError("cost model: a receiver window must not have sent messages")
    sll = sum(w.local_deliveries**2 for w in receivers)
    slh = sum(w.local_deliveries * w.heard for w in receivers)
    shh = sum(w.heard**2 for w in receivers)
    sle = sum(w.local_deliveries * w.busy_us for w in receivers)
    she = sum(w.heard * w.busy_us for w in receivers)
    det = sll * shh - slh * slh
    if det <= 1e-9 * max(sll * shh, 1.0):
        raise ValueError(
            "cost model: the receiver windows do not separate a from b"
            " (they need different deliveries-per-message ratios)"
        )
    return (sle * shh - she * slh) / det, (she * sll - sle * slh) / det


def sender_cost(a: float, b: float, w: NodeWindow) -> float:
    """``s``: what the sending node spent per message beyond its deliveries and hearing."""
    if not w.sent:
        raise ValueError("cost model: the sender window sent nothing")
    return (w.busy_us - a * w.local_deliveries - b * w.heard) / w.sent


def fit(
    receivers: Sequence[NodeWindow], sender: NodeWindow, idle_us_per_s: Sequence[float]
) -> CostModel:
    a, b = fit_receivers(receivers)
    return CostModel(a, b, sender_cost(a, b, sender), max(idle_us_per_s, default=0.0))


def checks(model: CostModel, windows: Sequence[NodeWindow]) -> list[dict[str, Any]]:
    """Predicted against measured CPU for every window (how well the model holds)."""
    out = []
    for w in windows:
        predicted = model.predict_us(w)
        out.append(
            {
                "phase": w.phase,
                "node": w.node,
                "measured_cpu_ms": round(w.cpu_us / 1000, 2),
                "predicted_cpu_ms": round(predicted / 1000, 2),
                "error": round(predicted / w.cpu_us - 1, 3) if w.cpu_us else None,
            }
        )
    return out


def project(
    model: CostModel,
    deliveries_per_message: int,
    rate: float,
    idle_node_us_per_message: float | None,
    nodes: Sequence[int] = PROJECT_NODES,
) -> dict[str, Any]:
    """N nodes on N one-core machines; one group, its D deliveries per message spread evenly.

    Per node and message of the group: a·D/N + b + s/N (every node hears
    every message, writes its share of the sockets, sends its share of the
    messages). The saturation rate is one core, less the idle cost, divided
    by that. ``cross_traffic``: a node's cost for the same rate of traffic
    in conversations local to each of the other N−1 nodes — with interest
    routing ``idle_node_us_per_message``, what a node without members was
    measured to spend per message (the scenario passes an upper bound),
    without it (every node hears everything) b.
    """
    d = deliveries_per_message
    rows = []
    for n in nodes:
        per_message = model.a * d / n + model.b + model.s / n
        max_rate = (CORE_US_PER_S - model.c) / per_message if per_message > 0 else None
        rows.append(
            {
                "nodes": n,
                "node_us_per_message": round(per_message, 1),
                "node_utilisation_at_rate": round((rate * per_message + model.c) / 1e6, 4),
                "max_msgs_per_s": round(max_rate, 1) if max_rate else None,
                "deliveries_per_s_per_node": round(max_rate * d / n) if max_rate else None,
                "deliveries_per_s_cluster": round(max_rate * d) if max_rate else None,
                "cross_traffic_us_per_s": round(
                    (n - 1) * rate * (idle_node_us_per_message or 0.0), 1
                ),
                "cross_traffic_us_per_s_without_routing": round((n - 1) * rate * model.b, 1),
            }
        )
    return {
        "formula": "node µs per message = a·D/N + b + s/N; max msgs/s = (1e6 − c) / that",
        "group_deliveries_per_message": d,
        "rate": rate,
        "rows": rows,
        "single_group_limit_msgs_per_s": round(CORE_US_PER_S / model.b, 1) if model.b > 0 else None,
        "assumptions": [
            "one core per node, each node on its own machine, CPU-bound, nothing else on it",
            "the group's members spread evenly over the N nodes with some online on every"
            " node, so every node hears every message (b) and writes D/N sockets (a)",
            "the senders spread evenly too: the sending cost s is shared over the nodes",
            "a, b, s as measured at this rate; corking makes a smaller at higher rates",
            "PostgreSQL and Redis run elsewhere and are not the limit: the store's appends/s"
            " and Redis's publications × subscribing nodes bound the cluster (their CPU per"
            " message here is in shared_services)",
            "one group's rate stays below 1e6/b messages/s however many nodes: every node"
            " with a member online hears every message",
        ],
    }
