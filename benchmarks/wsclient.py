"""A minimal WebSocket client on an ``asyncio.Protocol``, for load generation.

Why not the SDK or even ``websockets``' client: in a fan-out benchmark the
load generator must receive ~1,000 frames for every message the server
handles, on one core, without becoming the bottleneck. The ``websockets``
client spends a task wake-up, a frame object and a queue hop per frame; this
client parses frames straight out of each ``data_received`` chunk (often
hundreds of frames per chunk) and hands the payload bytes to a callback,
together with one ``time.time_ns()`` reading per chunk.

Scope: RFC 6455 client side, no extensions (no compression — the servers are
configured without it too), text/binary frames, fragmented messages, ping
(answered with pong) and close. Client frames are masked as the RFC requires.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    _c_apply_mask = None

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OnMessage = Callable[[bytes, int], None]


def _mask(data: bytes, mask: bytes) -> bytes:
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(data, mask))
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    return header + mask + _mask(payload, mask)


class HandshakeError(Exception):
    pass


class RawWebSocket(asyncio.Protocol):
    """One client connection; ``on_message(payload, now_ns)`` gets every data message."""

    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._key = ""
        self._buf = b""
        self._upgraded = False
        self._fragments: list[bytes] = []

    # -- connection -----------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        on_message: OnMessage,
        *,
        subprotocol: str | None = None,
        wait_s: float = 10.0,
        local_addr: tuple[str, int] | None = None,
    ) -> RawWebSocket:
        """Connect and upgrade; ``local_addr`` picks the source address (another
        127.0.0.x gives another ephemeral port range when one runs short)."""
        loop = asyncio.get_running_loop()
        proto = cls(on_message)
        try:
            # One budget for TCP connect + upgrade, like websockets' open_timeout.
            async with asyncio.timeout(wait_s):
                await loop.create_connection(lambda: proto, host, port, local_addr=local_addr)
                proto._send_handshake(host, port, subprotocol)
                await proto.handshake
        except BaseException:
            # Timed out (or failed): do not leave a half-open connection behind.
            if proto.transport is not None:
                proto.transport.abort()
            raise
        return proto

    def _send_handshake(self, host: str, port: int, subprotocol: str | None) -> None:
        assert self.transport is not None
        self._key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET / HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code if self.close_code is not None else 1006)

    # -- sending --------------------------------------------------------------
    def send_text(self, data: bytes) -> None:
        """Queue a text frame (never waits; the kernel and transport buffer it)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(0x1, data))

    def send_binary(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(0x2, data))

    def close(self, code: int = 1000) -> None:
        """Send a close frame and drop the connection (we do not wait for the reply)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(encode_frame(0x8, struct.pack("!H", code)))
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection abruptly, as a network failure would: no close frame,
        and a TCP reset (``SO_LINGER`` 0) instead of a FIN, so no TIME_WAIT either."""
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    # -- receiving ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            self._check_upgrade(buf[:end].decode("latin-1"))
            buf = buf[end + 4 :]
            if not self._upgraded:
                return
        now = time.time_ns()
        pos, n = 0, len(buf)
        on_message = self.on_message
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if b1 & 0x80:  # servers must not mask
                self._fail(1002)
                return
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            payload = buf[start:end]
            pos = end
            if opcode in (0x1, 0x2):
                if b0 & 0x80:
                    on_message(payload, now)
                else:
                    self._fragments = [payload]
            elif opcode == 0x0:
                self._fragments.append(payload)
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    on_message(whole, now)
            elif opcode == 0x9:  # ping: the server's keepalive
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(encode_frame(0xA, payload))
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close(self.close_code if self.close_code < 4000 else 1000)
                if not self.closed.done():
                    self.closed.set_result(self.close_code)
                self._buf = b""
                return
            # 0xA (pong) and unknown opcodes are ignored.
        self._buf = buf[pos:] if pos < n else b""

    def _check_upgrade(self, head: str) -> None:
        if self.handshake.done():  # the caller gave up waiting (timeout)
            self._fail(1006)
            return
        lines = head.split("\r\n")
        if not lines or " 101 " not in lines[0] + " ":
            self.handshake.set_exception(HandshakeError(f"no upgrade: {lines[0] if lines else ''}"))
            self._fail(1002)
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key.encode() + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self.handshake.set_exception(HandshakeError("bad Sec-WebSocket-Accept"))
            self._fail(1002)
            return
        self._upgraded = True
        self.handshake.set_result(None)

    def _fail(self, code: int) -> None:
        self.close_code = code
        if self.transport is not None:
            self.transport.abort()
