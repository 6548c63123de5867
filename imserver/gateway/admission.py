"""Connection caps on the WebSocket port, counted from TCP accept.

``websockets`` bounds the opening handshake in time (``open_timeout``: a
client trickling its upgrade request is aborted when it passes) but not in
number, and its ``Server.connections`` counts only finished handshakes. So
the count is kept here, in the connection object ``serve()`` builds for every
accepted socket: a socket over ``gateway.max_connections`` (or
``max_connections_per_ip`` from one address) is answered with
``503 too_many_connections`` before its request is read, and closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

from imserver.connection_limits import ConnectionLimiter, closing_response, peer_ip


def limited_connections(
    limiter: ConnectionLimiter, on_refused: Callable[[str], None]
) -> type[ServerConnection]:
    """A ``create_connection`` class for ``serve()`` that admits sockets through ``limiter``.

    ``on_refused`` is called with the error code of every refusal (for metrics).
    """

    class LimitedConnection(ServerConnection):
        #: Source address while admitted; None once refused or released.
        admitted_ip: str | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # Always hand the socket to websockets first: its handler task
            # then sees the close below and cleans up like any lost handshake.
            super().connection_made(transport)
            ip = peer_ip(transport)
            refusal = limiter.admit(ip)
            if refusal is None:
                self.admitted_ip = ip
                return
            on_refused(refusal.code)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(closing_response(refusal))
            transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.admitted_ip is not None:
                limiter.release(self.admitted_ip)
                self.admitted_ip = None
            super().connection_lost(exc)

    return LimitedConnection
