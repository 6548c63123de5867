"""The fan-out fast path: one serialised frame per codec, the same bytes to every socket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from websockets.frames import Frame

from imserver.gateway.session import server_frame
from imserver.hub import Hub
from imserver.metrics import Metrics
from imserver.protocol.codec import JSON, MSGPACK, Codec


@dataclass
class FrameSocket:
    """In-memory stand-in for a session: records what the hub hands it."""

    user: str
    device: str
    codec: Codec
    last_activity: float = 0.0
    watching: set[str] = field(default_factory=set)
    frames: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> bool:
        raise AssertionError("the fast path must not frame per socket")

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def close(self, code: int, reason: str) -> None:
        pass


def test_one_frame_per_codec_shared_by_all_sockets() -> None:
    built: list[tuple[bytes, bool]] = []

    def framer(data: bytes, text: bool) -> bytes:
        built.append((data, text))
        return server_frame(data, text)

    hub = Hub(Metrics(), framer=framer)
    socks = [FrameSocket(f"u{i}", "d", JSON if i % 2 else MSGPACK) for i in range(200)]
    for s in socks:
        hub.register(s)  # type: ignore[arg-type]
    event: dict[str, Any] = {"type": "event", "event": "message", "data": {"text": "你好"}}
    assert hub.deliver([s.user for s in socks], event) == 200
    assert len(built) == 2 and {text for _, text in built} == {True, False}
    json_frames = {s.frames[0] for s in socks if s.codec is JSON}
    assert len(json_frames) == 1  # literally the same bytes for every JSON socket
    frame = json_frames.pop()
    assert frame == server_frame(JSON.encode(event), True)


def test_server_frame_is_a_valid_unmasked_websocket_frame() -> None:
    payload = b"x" * 70_000  # forces the 64-bit length form
    raw = server_frame(payload, text=False)
    assert raw[0] == 0x82  # FIN + binary
    assert raw[1] & 0x80 == 0  # server frames are not masked
    chunks = [raw]

    def read_exact(n: int) -> Any:
        data = chunks[0][:n]
        chunks[0] = chunks[0][n:]
        yield from ()
        return data

    gen = Frame.parse(read_exact, mask=False)
    try:
        next(gen)
    except StopIteration as done:
        parsed = done.value
    assert parsed.data == payload and parsed.fin
