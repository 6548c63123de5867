"""This node's live numbers for the dashboard: connections, rates, latency percentiles.

A sampler reads the node's Prometheus registry once a second (one walk of a
few dozen samples: nothing is added to the message path) and keeps five
minutes of samples. Rates are differences of counters between samples;
percentiles come from the difference of a histogram's cumulative buckets
over the last minute, the way Prometheus' ``histogram_quantile`` does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

HISTORY = 300  # samples kept: five minutes at one a second
LATENCY_WINDOW_S = 60.0
#: Counter totals the dashboard charts, by the name prometheus_client exports.
COUNTERS = {
    "messages": "imserver_messages_stored_total",
    "deliveries": "imserver_deliveries_total",
    "callbacks_failed": "imserver_callbacks_failed_total",
}
#: Latency histograms (metrics.py), by the key the page shows them under.
HISTOGRAMS = {
    "send_ack": "imserver_send_ack_seconds",
    "card_callback": "imserver_card_act_to_callback_delivered_seconds",
    "callback_post": "imserver_callback_post_seconds",
}
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(slots=True, frozen=True)
class Sample:
    at: float  # s since epoch
    connections: int
    users: int
    counters: dict[str, float]
    buckets: dict[str, list[tuple[float, float]]]  # histogram key -> [(le, cumulative count)]


def read_registry(registry: CollectorRegistry) -> tuple[dict[str, float], dict[str, Any]]:
    """Counter totals (summed over labels) and histogram buckets (summed over labels)."""
    wanted = {v: k for k, v in COUNTERS.items()}
    hist = {v + "_bucket": k for k, v in HISTOGRAMS.items()}
    totals: dict[str, float] = dict.fromkeys(COUNTERS, 0.0)
    buckets: dict[str, dict[float, float]] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name in wanted:
                totals[wanted[s.name]] += s.value
            elif s.name in hist:
                le = float(s.labels.get("le", "inf"))
                per = buckets.setdefault(hist[s.name], {})
                per[le] = per.get(le, 0.0) + s.value
    return totals, {k: sorted(v.items()) for k, v in buckets.items()}


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (linear inside a bucket), or ``None``."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le  # beyond the top bucket: its lower edge is all we know
            span = count - prev_count
            inside = (rank - prev_count) / span if span else 1.0
            return prev_le + (le - prev_le) * inside
        prev_le, prev_count = le, count
    return prev_le


def bucket_delta(
    new: list[tuple[float, float]], old: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Observations between two readings of the same histogram, bucket by bucket."""
    before = dict(old)
    return [(le, count - before.get(le, 0.0)) for le, count in new]


@dataclass
class NodeSampler:
    """Samples ``registry`` and the hub's counts every ``interval_s``; ``start``/``stop`` it."""

    registry: CollectorRegistry
    connections: Callable[[], int]
    users: Callable[[], int]
    node: str = field(default_factory=lambda: f"{socket.gethostname()}/{os.getpid()}")
    interval_s: float = 1.0
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY))
    _task: asyncio.Task[None] | None = None

    def sample(self, now: float | None = None) -> Sample:
        totals, buckets = read_registry(self.registry)
        s = Sample(
            time.time() if now is None else now,
            self.connections(),
            self.users(),
            totals,
            buckets,
        )
        self.samples.append(s)
        return s

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dashboard-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def lifetime(self, _app: object) -> AsyncIterator[None]:
        """An aiohttp ``cleanup_ctx``: sample while the HTTP side runs."""
        await self.start()
        yield
        await self.stop()

    def snapshot(self) -> dict[str, Any]:
        """The newest numbers: counts, per-second rates, percentiles in ms, a minute's series."""
        if not self.samples:
            self.sample()
        last = self.samples[-1]
        prev = self.samples[-2] if len(self.samples) > 1 else last
        dt = max(last.at - prev.at, 1e-6)
        rates = {k: max(0.0, (last.counters[k] - prev.counters[k]) / dt) for k in COUNTERS}
        if last is prev:
            rates = dict.fromkeys(COUNTERS, 0.0)
        old = next((s for s in self.samples if s.at >= last.at - LATENCY_WINDOW_S), self.samples[0])
        latency: dict[str, dict[str, float | None]] = {}
        for key in HISTOGRAMS:
            delta = bucket_delta(last.buckets.get(key, []), old.buckets.get(key, []))
            latency[key] = {f"p{int(q * 100)}": _ms(quantile(q, delta)) for q in QUANTILES}
        series = list(self.samples)[-61:]
        return {
            "node": self.node,
            "at": last.at,
            "connections": last.connections,
            "users": last.users,
            "rates": {k: round(v, 2) for k, v in rates.items()},
            "totals": last.counters,
            "latency_ms": latency,
            "series": _series(series),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _series(samples: list[Sample]) -> dict[str, list[float]]:
    """Per-second rates over ``samples`` (the charts' x and y columns)."""
    out: dict[str, list[float]] = {"t": [], "messages": [], "deliveries": [], "connections": []}
    for a, b in itertools.pairwise(samples):
        dt = max(b.at - a.at, 1e-6)
        out["t"].append(round(b.at, 3))
        out["messages"].append(
            round(max(0.0, b.counters["messages"] - a.counters["messages"]) / dt, 2)
        )
        out["deliveries"].append(
            round(max(0.0, b.counters["deliveries"] - a.counters["deliveries"]) / dt, 2)
        )
        out["connections"].append(float(b.connections))
    return out
