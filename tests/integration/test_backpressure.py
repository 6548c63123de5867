"""Guarantee 5: a slow consumer is closed with 4008; everyone else keeps receiving."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import Harness, RawClient

LIMIT = 64 * 1024


async def test_slow_consumer_is_closed_and_others_get_everything(start_server: Any) -> None:
    server: Harness = await start_server(gateway={"send_buffer_limit_bytes": LIMIT})
    await server.users("alice", "fast", "slow")
    alice = await server.client("alice")
    fast = await server.client("fast")
    conv = (await alice.create_group("大文件", ["fast", "slow"]))["conv"]

    # The slow member: a tiny receive buffer and a client that stops reading
    # after one queued frame, so TCP pushes back onto the server.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.world.ws_port))
    slow_ws = await connect(
        server.url,
        sock=sock,
        subprotocols=["imserver.v1.json"],  # type: ignore[list-item]
        max_queue=1,
        compression=None,
    )
    slow = RawClient(slow_ws, "json")
    ok = await slow.request("auth", token=server.token("slow"))
    assert ok["type"] == "result"

    text = "汇" * 4000  # 12 KB of UTF-8 per message
    count = 400  # ~5 MB in all: far beyond the socket buffers and the bound
    for i in range(count):
        await alice.send_text(f"{i}:{text}", conv=conv)

    # Everybody else received every message, in order.
    for _ in range(200):
        if fast.last_seq(conv) == count + 1:
            break
        await asyncio.sleep(0.05)
    assert [m["seq"] for m in fast.messages(conv)] == list(range(1, count + 2))

    # The slow socket was closed by the server, and its buffer stayed bounded.
    closes = server.world.metrics.closes.labels("slow_consumer")._value.get()
    assert closes == 1
    slow_sessions = [s for s in server.world.hub.sockets() if s.user == "slow"]
    assert all(s.closed for s in slow_sessions)  # type: ignore[attr-defined]

    # Reading now drains what was buffered, then the close frame with 4008.
    received = 0
    code = None
    try:
        while True:
            raw = await asyncio.wait_for(slow_ws.recv(), 10)
            frame = orjson.loads(raw)
            if frame.get("event") == "message":
                received += 1
    except ConnectionClosed as e:
        code = e.rcvd.code if e.rcvd is not None else None
    assert code == 4008
    assert received < count  # it was cut off, not fed everything

    # The slow client reconnects and resyncs: nothing is lost.
    again = await server.client("slow", "d2")
    assert [m["seq"] for m in again.messages(conv)] == list(range(1, count + 2))


async def test_silent_connection_is_closed_with_idle_timeout(start_server: Any) -> None:
    server: Harness = await start_server(gateway={"idle_timeout_s": 0.5})
    raw = await server.raw("alice")
    assert await raw.expect_close(timeout=5) == 4011


async def test_pings_keep_a_connection_alive_past_the_idle_timeout(start_server: Any) -> None:
    server: Harness = await start_server(gateway={"idle_timeout_s": 0.5})
    raw = await server.raw("alice")
    for _ in range(8):
        await asyncio.sleep(0.2)
        assert (await raw.request("ping"))["type"] == "pong"
