"""Every node's live numbers on every node's dashboard: summaries over the bus.

Behind a load balancer the page is served by whichever node the balancer
picked, so each node publishes a small summary of its own sample (counts,
rates, send→ack percentiles) every couple of seconds on one bus topic that
every node hears (the Redis bus carries topics other than deliveries and
presence on its broadcast ``ctl`` channel; the local bus hands it straight
back). :class:`NodeTable` is the pure part: it parses what arrives, keeps the
newest summary per node, forgets nodes not heard from for ``EXPIRE_S`` and
holds at most ``MAX_NODES``. :class:`NodeBeacon` moves summaries between
the sampler, the bus and the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from imserver.bus.base import Bus

log = logging.getLogger(__name__)

#: The bus topic of node summaries (broadcast: every node subscribes).
TOPIC_NODES = "dashboard_nodes"
#: Summary format; another version is ignored (counted as malformed).
VERSION = 1
PUBLISH_EVERY_S = 2.0
#: A node not heard from for this long is dropped from the table.
EXPIRE_S = 10.0
#: The most nodes kept; summaries of further nodes are ignored until some expire.
MAX_NODES = 256
_MAX_NODE_ID = 200
_PERCENTILES = ("p50", "p95", "p99")


class MalformedSummary(ValueError):
    """A summary that is not what this version publishes."""


@dataclass(slots=True, frozen=True)
class NodeSummary:
    """One node's numbers at ``at`` (s since epoch, the sender's clock)."""

    node: str
    at: float
    connections: int
    users: int
    msgs_s: float
    deliveries_s: float
    msgs_total: int  # since the node started
    deliveries_total: int
    send_ack_ms: dict[str, float | None]

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, **asdict(self)}


def _count(payload: dict[str, Any], key: str) -> int:
    v = payload.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise MalformedSummary(f"{key!r} must be a non-negative integer")
    return v


def _number(v: Any, key: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise MalformedSummary(f"{key!r} must be a non-negative number")
    return float(v)


def parse_summary(payload: Any) -> NodeSummary:
    """A summary from the bus, checked field by field; :class:`MalformedSummary` if not one."""
    if not isinstance(payload, dict):
        raise MalformedSummary("a summary is an object")
    if payload.get("v") != VERSION:
        raise MalformedSummary(f"unknown summary version {payload.get('v')!r}")
    node = payload.get("node")
    if not isinstance(node, str) or not 0 < len(node) <= _MAX_NODE_ID:
        raise MalformedSummary(f"'node' must be a string of 1-{_MAX_NODE_ID} characters")
    latency = payload.get("send_ack_ms")
    if not isinstance(latency, dict):
        raise MalformedSummary("'send_ack_ms' must be an object")
    send_ack: dict[str, float | None] = {}
    for p in _PERCENTILES:
        v = latency.get(p)
        send_ack[p] = None if v is None else _number(v, f"send_ack_ms.{p}")
    return NodeSummary(
        node=node,
        at=_number(payload.get("at"), "at"),
        connections=_count(payload, "connections"),
        users=_count(payload, "users"),
        msgs_s=_number(payload.get("msgs_s"), "msgs_s"),
        deliveries_s=_number(payload.get("deliveries_s"), "deliveries_s"),
        msgs_total=_count(payload, "msgs_total"),
        deliveries_total=_count(payload, "deliveries_total"),
        send_ack_ms=send_ack,
    )


def summary_of(snapshot: dict[str, Any]) -> NodeSummary:
    """This node's summary, from a :meth:`NodeSampler.snapshot`."""
    return NodeSummary(
        node=snapshot["node"],
        at=snapshot["at"],
        connections=snapshot["connections"],
        users=snapshot["users"],
        msgs_s=snapshot["rates"]["messages"],
        deliveries_s=snapshot["rates"]["deliveries"],
        msgs_total=int(snapshot["totals"]["messages"]),
        deliveries_total=int(snapshot["totals"]["deliveries"]),
        send_ack_ms={p: snapshot["latency_ms"]["send_ack"][p] for p in _PERCENTILES},
    )


@dataclass
class NodeTable:
    """The newest summary per node, by the time *this* node heard it (clocks may differ)."""

    expire_s: float = EXPIRE_S
    max_nodes: int = MAX_NODES
    malformed: int = 0
    refused: int = 0  # summaries of new nodes while the table was full
    _nodes: dict[str, tuple[float, NodeSummary]] = field(default_factory=dict)

    def heard(self, payload: Any, now: float) -> NodeSummary | None:
        """Take one payload off the bus; a malformed one is counted and ignored."""
        try:
            summary = parse_summary(payload)
        except MalformedSummary as e:
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 100 == 0:
                log.warning(
                    "dashboard: ignored a malformed node summary (%d so far): %s", self.malformed, e
                )
            return None
        return summary if self.put(summary, now) else None

    def put(self, summary: NodeSummary, now: float) -> bool:
        """Keep ``summary`` unless an newer one of the node is held or the table is full."""
        held = self._nodes.get(summary.node)
        if held is not None and held[1].at > summary.at:
            return False  # an older one arriving late (e.g. replayed after a reconnect)
        if held is None and len(self._nodes) >= self.max_nodes:
            self.expire(now)
            if len(self._nodes) >= self.max_nodes:
                self.refused += 1
                return False
        self._nodes[summary.node] = (now, summary)
        return True

    def expire(self, now: float) -> list[str]:
        """Drop nodes not heard from for ``expire_s``; their ids."""
        gone = [n for n, (heard, _) in self._nodes.items() if now - heard > self.expire_s]
        for n in gone:
            del self._nodes[n]
        return gone

    def live(self, now: float) -> list[NodeSummary]:
        """The nodes heard from within ``expire_s``, by node id."""
        self.expire(now)
        return [s for _, (_, s) in sorted(self._nodes.items())]


def cluster_view(nodes: list[NodeSummary], this_node: str) -> dict[str, Any]:
    """The page's node table and the cluster totals the tiles show (sums over the nodes)."""
    return {
        "nodes": [{**asdict(s), "self": s.node == this_node} for s in nodes],
        "cluster": {
            "nodes": len(nodes),
            "connections": sum(s.connections for s in nodes),
            "users": sum(s.users for s in nodes),  # a user on two nodes counts twice
            "msgs_s": round(sum(s.msgs_s for s in nodes), 2),
            "deliveries_s": round(sum(s.deliveries_s for s in nodes), 2),
            "msgs_total": sum(s.msgs_total for s in nodes),
            "deliveries_total": sum(s.deliveries_total for s in nodes),
        },
    }


@dataclass
class NodeBeacon:
    """Publishes this node's summary every ``every_s`` and files everyone's in ``table``."""

    bus: Bus
    snapshot: Callable[[], dict[str, Any]]
    table: NodeTable = field(default_factory=NodeTable)
    every_s: float = PUBLISH_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _task: asyncio.Task[None] | None = None

    def _on_summary(self, payload: dict[str, Any]) -> None:
        self.table.heard(payload, self.clock())

    async def publish_once(self) -> None:
        """Publish this node's summary; it also goes straight into the table (Redis may be away)."""
        summary = summary_of(self.snapshot())
        self.table.put(summary, self.clock())
        if getattr(self.bus, "connected", True) is False:
            return  # Redis is away: a stale summary must not queue in the bus's outbox
        await self.bus.publish(TOPIC_NODES, summary.to_wire())

    async def _run(self) -> None:
        while True:
            try:
                await self.publish_once()
            except Exception:  # the dashboard's beacon must never take anything else down
                log.exception("dashboard: publishing this node's summary failed")
            await asyncio.sleep(self.every_s)

    async def start(self) -> None:
        if self._task is None:
            self.bus.subscribe(TOPIC_NODES, self._on_summary)
            self._task = asyncio.create_task(self._run(), name="dashboard-beacon")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def view(self, this_node: str) -> dict[str, Any]:
        return cluster_view(self.table.live(self.clock()), this_node)
