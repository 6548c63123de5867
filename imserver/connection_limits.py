"""How many TCP connections one port, and one source address, may hold open.

Pure bookkeeping shared by the HTTP port (``http/guarded_server.py``) and the
WebSocket port (``gateway/admission.py``): each asks
:meth:`ConnectionLimiter.admit` when a socket connects and calls
:meth:`ConnectionLimiter.release` when it closes. Timeouts bound how *long* a
slow client holds a socket; these caps bound how *many* it can hold at once,
so a thousand trickling sockets from one address cannot starve everyone else.

A refused socket is answered with :func:`closing_response` — a complete
HTTP/1.1 error with the usual JSON body — and closed before anything is
parsed, so a flood costs one accept and one write per socket.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import orjson

from imserver.errors import ImError, TooManyConnections


class ConnectionLimiter:
    """Open-connection counts, in total and per source address; 0 means no cap."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}

    def admit(self, ip: str) -> TooManyConnections | None:
        """Count a new connection from ``ip``, or the refusal to send it (nothing counted)."""
        if self.max_total and self.total >= self.max_total:
            return TooManyConnections(
                f"the server has {self.total} open connections, its limit; retry shortly"
            )
        held = self._per_ip.get(ip, 0)
        if self.max_per_ip and held >= self.max_per_ip:
            return TooManyConnections(
                f"your address already holds {held} open connections, the limit per address"
            )
        self.total += 1
        self._per_ip[ip] = held + 1
        return None

    def release(self, ip: str) -> None:
        """Forget one admitted connection from ``ip`` (call once per admitted connection)."""
        self.total -= 1
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def held_by(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)


def peer_ip(transport: asyncio.BaseTransport) -> str:
    """The source address of a TCP transport ("" if the OS does not say, e.g. a Unix socket)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


def closing_response(err: ImError) -> bytes:
    """A whole HTTP/1.1 response for ``err`` that closes the connection.

    Written straight to a transport that has no request (or an unfinished
    one), so clients still get the JSON error shape every other HTTP error has.
    """
    error = {"code": err.code, "message": err.message}
    body = orjson.dumps({"error": error})
    status = HTTPStatus(err.http_status)
    retry = "Retry-After: 1\r\n" if err.http_status == HTTPStatus.SERVICE_UNAVAILABLE else ""
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{retry}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
