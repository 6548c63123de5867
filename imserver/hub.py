"""Which users and devices are connected to *this* node, and fan-out to them.

The hub does not know where an event came from (this node or the bus): it is
asked "deliver this frame to these users" and writes bytes. A frame is encoded
at most once per codec per delivery, however many sockets receive it.

Corking (``Hub(cork=True)``, what the server runs): deliveries made during one
event-loop iteration are written at the start of the next, one write per
socket. A lone delivery is written exactly as without corking; when several
reach the same socket together -- group commit releases a batch of stored
messages at once, so this is what happens under load -- their frames go out
in one ``write`` and one ``send`` syscall. On loopback and real NICs alike the
kernel's per-``send`` cost is most of a delivery's CPU (benchmarks/PROFILE.md),
so this is the one lever that lowers the cost per delivery as load rises.
"""

from __future__ import annotations

import asyncio
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
        self,
        metrics: Metrics,
        framer: Callable[[bytes, bool], bytes] | None = None,
        *,
        cork: bool = False,
    ) -> None:
        self._by_user: dict[str, dict[str, Socket]] = {}
        self._watchers: defaultdict[str, set[Socket]] = defaultdict(set)
        self._metrics = metrics
        self._count = 0  # sockets registered; kept, not summed, so connecting stays O(1)
        #: Builds the transport-level frame once per codec per delivery; None:
        #: sockets frame each message themselves (``write``).
        self._framer = framer
        #: Corking needs ready-made frames it can concatenate, so only with a framer.
        self._cork = cork and framer is not None
        #: Corked deliveries; non-empty exactly while a flush is scheduled.
        self._pending: list[tuple[list[Socket], dict[str, Any]]] = []

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

    def user_count(self) -> int:
        """Distinct users with at least one socket on this node."""
        return len(self._by_user)

    def sockets(self) -> list[Socket]:
        return [s for d in self._by_user.values() for s in d.values()]

    # -- fan-out -------------------------------------------------------------
    def deliver(
        self,
        recipients: Iterable[str],
        frame: dict[str, Any],
        skip_device: tuple[str, str] | None = None,
    ) -> int:
        """Write ``frame`` to every local socket of every recipient.

        Returns the number of sockets it goes to: written now, or -- corked --
        at the next :meth:`flush`. ``recipients`` must not repeat a user
        (callers pass member lists). ``skip_device`` ``(user, device)`` is left
        out: the device that caused the event already has the answer.
        """
        by_user = self._by_user
        socks = [
            sock
            for user in recipients
            if (devices := by_user.get(user)) is not None
            for sock in devices.values()
        ]
        if skip_device is not None:
            socks = [s for s in socks if (s.user, s.device) != skip_device]
        return self._send(socks, frame)

    def _send(self, socks: list[Socket], frame: dict[str, Any]) -> int:
        if not socks:
            return 0
        self._metrics.observe_fanout(len(socks))
        if not self._cork:
            writes = self._write_all(socks, frame)
            self._metrics.deliveries.inc(writes)
            return writes
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append((socks, frame))
        return len(socks)

    def flush(self) -> int:
        """Write every corked delivery now, one write per socket; returns frames written."""
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            writes = self._write_all(*pending[0])
        elif pending:
            writes = self._write_coalesced(pending)
        else:
            return 0
        self._metrics.deliveries.inc(writes)
        return writes

    def _frame_for(self, codec: Codec, frame: dict[str, Any], cache: dict[str, bytes]) -> bytes:
        """``frame`` encoded (and framed) for ``codec``, once per codec via ``cache``."""
        data = codec.encode(frame)
        if self._framer is not None:
            data = self._framer(data, codec.text)
        cache[codec.name] = data
        return data

    def _write_all(self, socks: Iterable[Socket], frame: dict[str, Any]) -> int:
        """Encode (and frame) ``frame`` once per codec; write those bytes to each socket."""
        encoded: dict[str, bytes] = {}
        writes = 0
        last: Codec | None = None  # sockets mostly share a codec: skip the dict then
        data = b""
        # Two copies of one loop on purpose: choosing write/write_frame per
        # socket would cost an attribute lookup on the hottest line.
        if self._framer is None:
            for sock in socks:
                if sock.codec is not last:
                    last = sock.codec
                    data = encoded.get(last.name) or self._frame_for(last, frame, encoded)
                if sock.write(data):
                    writes += 1
            return writes
        for sock in socks:
            if sock.codec is not last:
                last = sock.codec
                data = encoded.get(last.name) or self._frame_for(last, frame, encoded)
            if sock.write_frame(data):
                writes += 1
        return writes

    def _write_coalesced(self, pending: list[tuple[list[Socket], dict[str, Any]]]) -> int:
        """Several deliveries at once: each socket gets its frames, in order, in one write.

        When every delivery goes to the same sockets (the usual case: a busy
        group), the concatenation is built once per codec and shared, like a
        single frame; otherwise each socket's frames are gathered separately.
        """
        first = pending[0][0]
        if all(socks == first for socks, _ in pending):
            joined: dict[str, bytes] = {}
            count = len(pending)
            writes = 0
            for sock in first:
                codec = sock.codec
                data = joined.get(codec.name)
                if data is None:
                    scratch: dict[str, bytes] = {}
                    data = b"".join(self._frame_for(codec, f, scratch) for _, f in pending)
                    joined[codec.name] = data
                if sock.write_frame(data):
                    writes += count
            return writes
        per_sock: dict[Socket, list[bytes]] = {}
        for socks, frame in pending:
            encoded: dict[str, bytes] = {}
            for sock in socks:
                codec = sock.codec
                data = encoded.get(codec.name)
                if data is None:
                    data = self._frame_for(codec, frame, encoded)
                chunks = per_sock.get(sock)
                if chunks is None:
                    per_sock[sock] = [data]
                else:
                    chunks.append(data)
        writes = 0
        for sock, chunks in per_sock.items():
            if sock.write_frame(chunks[0] if len(chunks) == 1 else b"".join(chunks)):
                writes += len(chunks)
        return writes

    def on_deliver(self, payload: dict[str, Any]) -> None:
        """Bus handler for ``TOPIC_DELIVER``; ``skip_device`` is ``[user, device]`` or absent.

        A stored message whose readers see different frames (a card with
        sensitive fields: masked and clear) comes as one payload with
        ``variants`` -- one seq, one publication on a networked bus.
        """
        variants = payload.get("variants")
        if variants is not None:
            for part in variants:
                self.deliver(part["recipients"], part["frame"])
            return
        skip = payload.get("skip_device")
        self.deliver(payload["recipients"], payload["frame"], tuple(skip) if skip else None)

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
        self._send(list(watchers), frame)

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

    def on_directory(self, payload: dict[str, Any]) -> None:
        """Bus handler for ``TOPIC_DIRECTORY``: every local socket hears of the new cursor.

        One small frame per sync, whatever it changed: clients pull the changes
        with ``directory.changes``, so a 100,000-member sync is not 100,000 events.
        """
        self._send(self.sockets(), event_frame("directory", {"cursor": payload["cursor"]}))

    def close_all(self, code: int, reason: str) -> None:
        self.flush()  # what was delivered before the close goes out before it
        for sock in self.sockets():
            sock.close(code, reason)
