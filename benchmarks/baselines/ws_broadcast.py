"""The thinnest fan-out server we can write on ``websockets``: the fan-out floor.

One room; every connection joins it; a ``send`` from any client becomes one
``message`` event that ``websockets.broadcast`` writes to every connection,
then the sender gets a ``result``. No auth check, no store, no membership, no
validation. It speaks just enough of imserver's JSON protocol (same frame
shapes, ``auth``/``group.create``/anything answered with a ``result``) that the
*same* load generator drives it, so ``fanout`` can report imserver's CPU per
delivery as a multiple of this floor.

Run: ``python -m benchmarks.baselines.ws_broadcast --port 8800``. It uses the
same event loop (uvloop when installed) and the same ``websockets`` settings
that matter for cost (no compression) as imserver.

``--raw-frames`` turns it into the *write floor*: the event is framed once and
the same bytes go to every connection with one ``transport.write`` each -- no
``websockets`` framing, no checks, nothing but the loop and the ``send``
syscall. No Python server that writes each socket once per message can spend
less per delivery, so ``fanout --floor`` shows how much of a delivery's cost is
left for any server's own code to save.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.frames import Frame, Opcode

ROOM: set[ServerConnection] = set()
_SEQ = itertools.count(1)
CONV = "g:baseline"


def _answer(frame: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(event to broadcast or None, result data) for one request frame."""
    kind = frame.get("type")
    if kind == "send":
        seq = next(_SEQ)
        ts = int(time.time() * 1000)
        event = {
            "type": "event",
            "event": "message",
            "data": {
                "conv": frame.get("conv") or CONV,
                "seq": seq,
                "sender": "bench",
                "device": "bench",
                "kind": frame.get("kind", "text"),
                "body": frame.get("body"),
                "ts": ts,
                "client_msg_id": frame.get("client_msg_id"),
                "recalled": False,
            },
        }
        result = {
            "conv": frame.get("conv") or CONV,
            "seq": seq,
            "ts": ts,
            "client_msg_id": frame.get("client_msg_id"),
            "duplicate": False,
        }
        return orjson.dumps(event).decode(), result
    if kind == "group.create":
        return None, {"conv": CONV, "name": frame.get("name", ""), "members": []}
    return None, {}


RAW_FRAMES = False  # set by --raw-frames: the write floor


def write_floor(event: str) -> None:
    """Frame once, then one ``transport.write`` of the same bytes per connection."""
    data = Frame(Opcode.TEXT, event.encode()).serialize(mask=False)
    for ws in ROOM:
        ws.transport.write(data)


async def handler(ws: ServerConnection) -> None:
    ROOM.add(ws)
    try:
        async for raw in ws:
            frame = orjson.loads(raw)
            event, result = _answer(frame)
            if event is not None:
                if RAW_FRAMES:
                    write_floor(event)
                else:
                    broadcast(ROOM, event)
            await ws.send(
                orjson.dumps({"type": "result", "id": frame.get("id"), "data": result}).decode()
            )
    finally:
        ROOM.discard(ws)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    async with serve(
        handler,
        "127.0.0.1",
        port,
        compression=None,
        max_size=4 * 65536,
        subprotocols=None,
    ):
        await stop


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--raw-frames", action="store_true", help="the write floor instead of broadcast"
    )
    args = parser.parse_args()
    global RAW_FRAMES
    RAW_FRAMES = args.raw_frames
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.port))
    else:
        uvloop.run(main(args.port))


if __name__ == "__main__":
    run()
