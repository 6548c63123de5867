"""Prometheus metrics, one registry per server instance (no module globals).

A registry per instance lets tests build several servers in one process
without metric-name collisions.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


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

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out
