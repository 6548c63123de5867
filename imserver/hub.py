"""Which users and devices are connected to *this* node, and fan-out to them.

The hub does not know where an event came from (this node or the bus): it is
asked "deliver this frame to these users" and writes bytes. A frame is encoded
at most once per codec per delivery, however many sockets receive it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from imserver.metrics import Metrics
from imserver.protocol.codec import Codec
from imserver.protocol.frames import (
    CLOSE_IDLE_TIMEOUT,
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    event_frame,
)

log = logging.getLogger(__name__)


class Socket(Protocol):
    """What the hub needs from a connected session."""

    user: str
    device: str
    codec: Codec
    last_activity: float
    watching: set[str]

    def write(self, data: bytes) -> bool:
        """Queue ``data`` without waiting; False if the socket was closed instead."""

    def write_frame(self, frame: bytes) -> bool:
        """Queue an already framed message (see ``Hub(framer=...)``)."""

    def close(self, code: int, reason: str) -> None: ...


class Hub:
    def __init__(
        self, metrics: Metrics, framer: Callable[[bytes, bool], bytes] | None = None
    ) -> None:
        self._by_user: dict[str, dict[str, Socket]] = {}
        self._watchers: defaultdict[str, set[Socket]] = defaultdict(set)
        self._metrics = metrics
        self._count = 0  # sockets registered; kept, not summed, so connecting stays O(1)
        #: Builds the transport-level frame once per codec per delivery; None:
        #: sockets frame each message themselves (``write``).
        self._framer = framer

    # -- registry ------------------------------------------------------------
    def register(self, sock: Socket) -> bool:
        """Add a socket; close an older one for the same device.

        Returns True when this made the user go online on this node.
        """
        devices = self._by_user.get(sock.user)
        first = devices is None
        if devices is None:
            devices = self._by_user[sock.user] = {}
        old = devices.get(sock.device)
        devices[sock.device] = sock
        if old is None:
            self._count += 1
        elif old is not sock:
            old.close(CLOSE_REPLACED, "replaced by a new connection of the same device")
        self._metrics.connections.set(self._count)
        return first

    def unregister(self, sock: Socket) -> bool:
        """Remove a socket; returns True when the user has no device left here."""
        for user in sock.watching:
            watchers = self._watchers.get(user)
            if watchers is not None:
                watchers.discard(sock)
                if not watchers:
                    del self._watchers[user]
        sock.watching.clear()
        devices = self._by_user.get(sock.user)
        if devices is None or devices.get(sock.device) is not sock:
            return False
        del devices[sock.device]
        self._count -= 1
        self._metrics.connections.set(self._count)
        if devices:
            return False
        del self._by_user[sock.user]
        return True

    def is_online(self, user: str) -> bool:
        return user in self._by_user

    def connection_count(self) -> int:
        return self._count

    def sockets(self) -> list[Socket]:
        return [s for d in self._by_user.values() for s in d.values()]

    # -- fan-out -------------------------------------------------------------
    def deliver(self, recipients: Iterable[str], frame: dict[str, Any]) -> int:
        """Write ``frame`` to every local socket of every recipient; returns writes.

        ``recipients`` must not repeat a user (callers pass member lists).
        """
        by_user = self._by_user
        writes = self._write_all(
            (sock for user in recipients for sock in list(by_user.get(user, {}).values())), frame
        )
        self._metrics.deliveries.inc(writes)
        return writes

    def _write_all(self, socks: Iterable[Socket], frame: dict[str, Any]) -> int:
        """Encode (and frame) ``frame`` once per codec; write those bytes to each socket."""
        encoded: dict[str, bytes] = {}
        writes = 0
        framer = self._framer
        for sock in socks:
            codec = sock.codec
            data = encoded.get(codec.name)
            if data is None:
                data = codec.encode(frame)
                if framer is not None:
                    data = framer(data, codec.text)
                encoded[codec.name] = data
            if sock.write_frame(data) if framer is not None else sock.write(data):
                writes += 1
        return writes

    def on_deliver(self, payload: dict[str, Any]) -> None:
        """Bus handler for ``TOPIC_DELIVER``."""
        self.deliver(payload["recipients"], payload["frame"])

    # -- presence watching ---------------------------------------------------
    def watch(self, sock: Socket, users: Iterable[str]) -> None:
        for user in users:
            sock.watching.add(user)
            self._watchers[user].add(sock)

    def unwatch(self, sock: Socket, users: Iterable[str]) -> None:
        for user in users:
            sock.watching.discard(user)
            watchers = self._watchers.get(user)
            if watchers is not None:
                watchers.discard(sock)
                if not watchers:
                    del self._watchers[user]

    def on_presence(self, payload: dict[str, Any]) -> None:
        """Bus handler for ``TOPIC_PRESENCE``: tell the sockets watching that user."""
        watchers = self._watchers.get(payload["user"])
        if not watchers:
            return
        frame = event_frame("presence", {"user": payload["user"], "online": payload["online"]})
        self._write_all(list(watchers), frame)

    # -- housekeeping --------------------------------------------------------
    def close_idle(self, idle_timeout_s: float, now: float | None = None) -> int:
        """Close sockets that sent nothing for ``idle_timeout_s``; returns how many."""
        now = time.monotonic() if now is None else now
        closed = 0
        for sock in self.sockets():
            if now - sock.last_activity > idle_timeout_s:
                sock.close(CLOSE_IDLE_TIMEOUT, "idle timeout")
                closed += 1
        return closed

    def on_revoke(self, payload: dict[str, Any]) -> None:
        """Bus handler for ``TOPIC_REVOKE``: close the user's (or one device's) sockets."""
        devices = self._by_user.get(payload["user"])
        if not devices:
            return
        for device, sock in list(devices.items()):
            if payload.get("device") in (None, device):
                sock.close(CLOSE_REVOKED, "access revoked")

    def close_all(self, code: int, reason: str) -> None:
        for sock in self.sockets():
            sock.close(code, reason)
