"""Prometheus metrics, one registry per server instance (no module globals).

A registry per instance lets tests build several servers in one process
without metric-name collisions.

Every label has a bounded set of values: request types and error codes are
the protocol's own (``imserver/errors.py``), close reasons are the close
codes' names, HTTP routes are the router's templates (never a raw path), and
``app`` appears nowhere (apps are registered, but a metric per app would grow
with every registration). docs/operations.md "Metrics" lists every metric.

Hot paths keep the cost of a metric to one ``observe`` on a histogram child
bound once at construction (no ``labels()`` lookup per message).
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imserver.errors import ImError

#: Latencies on the message path: sub-millisecond to a few seconds.
FAST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: Latencies that include a business system's answer or a retry backoff.
SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Counts: sockets per fan-out, jobs per commit, items waiting in a queue.
COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def error_codes() -> list[str]:
    """Every stable error code of the hierarchy, so each counter starts at 0."""
    codes: set[str] = set()
    stack: list[type[ImError]] = [ImError]
    while stack:
        cls = stack.pop()
        codes.add(cls.code)
        stack.extend(cls.__subclasses__())
    return sorted(codes)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "imserver_connections", "Authenticated WebSocket connections on this node", registry=r
        )
        self.deliveries = Counter(
            "imserver_deliveries", "Event frames written to sockets", registry=r
        )
        self.messages = Counter(
            "imserver_messages_stored", "Messages durably stored", ["kind"], registry=r
        )
        self.requests = Counter(
            "imserver_requests", "Client requests handled", ["type"], registry=r
        )
        self.errors = Counter(
            "imserver_request_errors",
            "Client requests answered with an error",
            ["code"],
            registry=r,
        )
        self.closes = Counter(
            "imserver_connection_closes", "Connections closed by the server", ["reason"], registry=r
        )
        self.connections_refused = Counter(
            "imserver_connections_refused",
            "TCP connections refused over a cap, or cut off before finishing a request head",
            ["port", "code"],
            registry=r,
        )

        self.callbacks = Counter(
            "imserver_callbacks", "Callback delivery outcomes", ["outcome"], registry=r
        )
        self.callbacks_failed = Counter(
            "imserver_callbacks_failed",
            "Callbacks that exhausted their retry budget",
            registry=r,
        )
        # App events travel the callback outbox but are counted apart from the
        # action callbacks above (docs/cards.md "App events"): 6 event names x 4 outcomes.
        self.app_events = Counter(
            "imserver_app_events",
            "App events by event name and outcome (enqueued, delivered, retry, failed)",
            ["event", "outcome"],
            registry=r,
        )

        # -- latency and size histograms (docs/operations.md "Metrics") -----
        self.send_ack = Histogram(
            "imserver_send_ack_seconds",
            "A chat send: frame received until its ack is written (stored durably in between)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.fanout_sockets = Histogram(
            "imserver_fanout_sockets",
            "Local sockets one delivered event is written to (fan-out per message)",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.card_act_enqueued = Histogram(
            "imserver_card_act_to_callback_enqueued_seconds",
            "A card action: received until its callback is in the outbox (decision committed)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.card_act_delivered = Histogram(
            "imserver_card_act_to_callback_delivered_seconds",
            "A card action: decided until the business system acknowledged its callback",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.callback_post = Histogram(
            "imserver_callback_post_seconds",
            "One callback HTTP POST to a business system, whatever its outcome",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.store_commit = Histogram(
            "imserver_store_commit_seconds",
            "One group-commit transaction of the store's writer (all its jobs)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.store_commit_jobs = Histogram(
            "imserver_store_commit_jobs",
            "Write jobs committed together in one group-commit transaction",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.store_queue_depth = Histogram(
            "imserver_store_write_queue_depth",
            "Write jobs waiting in the writer's queue when a commit starts (its own included)",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.callback_batch = Histogram(
            "imserver_callback_claim_batch",
            "Due outbox entries claimed in one round of the callback dispatcher",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.http_requests = Histogram(
            "imserver_http_request_seconds",
            "HTTP requests by route template and status class",
            ["method", "route", "status"],
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.http_errors = Counter(
            "imserver_http_errors",
            "HTTP requests answered with an error body, by stable code",
            ["code"],
            registry=r,
        )
        # -- backlog gauges, read from the store when /metrics is scraped -----
        self.outbox_backlog = Gauge(
            "imserver_outbox_backlog",
            "Outbox entries (callbacks, app events) by state, cluster-wide",
            ["state"],
            registry=r,
        )
        self.timer_backlog = Gauge(
            "imserver_timer_backlog",
            "Card timers (reminders, overdue marks, escalations) not yet fired, cluster-wide",
            registry=r,
        )
        for code in error_codes():  # a code never seen still shows (as 0) in alerts
            self.errors.labels(code)
            self.http_errors.labels(code)
        # Bound once: observing these is one call on the fast path.
        self.observe_send_ack = self.send_ack.observe
        self.observe_fanout = self.fanout_sockets.observe
        # -- stream mode (docs/cards.md "Stream mode") -------------------------
        self.app_streams = Gauge(
            "imserver_app_streams", "Business-system stream connections on this node", registry=r
        )
        self.stream_deliveries = Counter(
            "imserver_stream_deliveries",
            "Outbox items sent over an app's stream, by outcome (acked, nacked, timeout, closed)",
            ["outcome"],
            registry=r,
        )

    def observe_commit(self, seconds: float, jobs: int, waiting: int) -> None:
        """One group commit (called from the store's writer, maybe on its thread)."""
        self.store_commit.observe(seconds)
        self.store_commit_jobs.observe(jobs)
        self.store_queue_depth.observe(waiting)

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out


class BacklogStore(Protocol):
    """What the backlog gauges read (both store backends)."""

    async def work_backlog(self) -> tuple[int, int, int]: ...


async def sample_backlog(metrics: Metrics, store: BacklogStore) -> None:
    """Set the backlog gauges from the store: called when ``/metrics`` is scraped.

    At scrape time rather than on a request or a due-loop round: three
    indexed counts every scrape interval cost nothing on the hot paths, and
    the gauges are never staler than the scrape itself.
    """
    pending, failed, timers = await store.work_backlog()
    metrics.outbox_backlog.labels("pending").set(pending)
    metrics.outbox_backlog.labels("failed").set(failed)
    metrics.timer_backlog.set(timers)
