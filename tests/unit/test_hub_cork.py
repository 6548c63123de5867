"""Corked fan-out: deliveries of one loop iteration leave as one write per socket."""

from __future__ import annotations

import asyncio
from typing import Any

from imserver.gateway.session import server_frame
from imserver.hub import Hub
from imserver.metrics import Metrics
from imserver.protocol.codec import JSON, MSGPACK, Codec
from imserver.protocol.frames import event_frame


class WireSocket:
    """In-memory stand-in for a session: records each write as it reached the transport."""

    def __init__(self, user: str, codec: Codec = JSON, *, open_: bool = True) -> None:
        self.user = user
        self.device = "d"
        self.codec = codec
        self.last_activity = 0.0
        self.watching: set[str] = set()
        self.writes: list[bytes] = []
        self.open = open_
        self.closes: list[int] = []

    def write(self, data: bytes) -> bool:
        raise AssertionError("a corked hub writes ready-made frames only")

    def write_frame(self, frame: bytes) -> bool:
        if not self.open:
            return False
        self.writes.append(frame)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closes.append(code)
        self.open = False


def _event(n: int) -> dict[str, Any]:
    return event_frame("message", {"conv": "g:1", "seq": n, "body": {"text": f"m{n}"}})


def _wire(codec: Codec, *events: dict[str, Any]) -> bytes:
    return b"".join(server_frame(codec.encode(e), codec.text) for e in events)


def _corked_hub(socks: list[WireSocket]) -> tuple[Hub, Metrics]:
    metrics = Metrics()
    hub = Hub(metrics, framer=server_frame, cork=True)
    for s in socks:
        hub.register(s)  # type: ignore[arg-type]
    return hub, metrics


def _delivered(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("imserver_deliveries_total") or 0.0


async def _next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_lone_delivery_is_written_at_the_next_iteration_unchanged() -> None:
    socks = [WireSocket("a"), WireSocket("b", MSGPACK)]
    hub, metrics = _corked_hub(socks)
    assert hub.deliver(["a", "b"], _event(1)) == 2
    assert all(not s.writes for s in socks)  # corked: nothing written synchronously
    await _next_iteration()
    assert socks[0].writes == [_wire(JSON, _event(1))]
    assert socks[1].writes == [_wire(MSGPACK, _event(1))]
    assert _delivered(metrics) == 2


async def test_deliveries_in_one_iteration_leave_as_one_write_per_socket() -> None:
    socks = [WireSocket(f"u{i}", JSON if i % 3 else MSGPACK) for i in range(30)]
    hub, metrics = _corked_hub(socks)
    users = [s.user for s in socks]
    for n in range(1, 6):
        hub.deliver(users, _event(n))
    await _next_iteration()
    events = [_event(n) for n in range(1, 6)]
    for s in socks:
        assert s.writes == [_wire(s.codec, *events)]  # one write, frames in order
    json_writes = {id(s.writes[0]) for s in socks if s.codec is JSON}
    assert len(json_writes) == 1  # the joined bytes are built once per codec and shared
    assert _delivered(metrics) == 30 * 5


async def test_different_recipients_each_get_exactly_their_frames_in_order() -> None:
    a, b, c = WireSocket("a"), WireSocket("b", MSGPACK), WireSocket("c")
    hub, metrics = _corked_hub([a, b, c])
    hub.deliver(["a", "b"], _event(1))
    hub.deliver(["b", "c"], _event(2))
    hub.deliver(["a", "c", "ghost"], _event(3))
    hub.deliver(["b"], _event(4))
    await _next_iteration()
    assert a.writes == [_wire(JSON, _event(1), _event(3))]
    assert b.writes == [_wire(MSGPACK, _event(1), _event(2), _event(4))]
    assert c.writes == [_wire(JSON, _event(2), _event(3))]
    assert _delivered(metrics) == 7


async def test_separate_iterations_are_separate_writes() -> None:
    a = WireSocket("a")
    hub, _ = _corked_hub([a])
    hub.deliver(["a"], _event(1))
    await _next_iteration()
    hub.deliver(["a"], _event(2))
    await _next_iteration()
    assert a.writes == [_wire(JSON, _event(1)), _wire(JSON, _event(2))]


async def test_a_closed_socket_is_skipped_and_not_counted() -> None:
    a, b = WireSocket("a"), WireSocket("b", open_=False)
    hub, metrics = _corked_hub([a, b])
    hub.deliver(["a", "b"], _event(1))
    hub.deliver(["a", "b"], _event(2))
    await _next_iteration()
    assert a.writes == [_wire(JSON, _event(1), _event(2))] and b.writes == []
    assert _delivered(metrics) == 2


async def test_presence_events_are_corked_with_messages_in_order() -> None:
    a, bob = WireSocket("a"), WireSocket("bob")
    hub, _ = _corked_hub([a, bob])
    hub.watch(a, ["bob"])  # type: ignore[arg-type]
    hub.deliver(["a"], _event(1))
    hub.on_presence({"user": "bob", "online": False})
    await _next_iteration()
    presence = event_frame("presence", {"user": "bob", "online": False})
    assert a.writes == [_wire(JSON, _event(1), presence)]


async def test_close_all_writes_what_was_delivered_before_closing() -> None:
    a = WireSocket("a")
    hub, _ = _corked_hub([a])
    hub.deliver(["a"], _event(1))
    hub.close_all(1012, "restarting")
    assert a.writes == [_wire(JSON, _event(1))] and a.closes == [1012]
    await _next_iteration()  # the scheduled flush finds nothing left
    assert len(a.writes) == 1


async def test_without_a_framer_cork_is_off_and_writes_are_immediate() -> None:
    class PlainSocket(WireSocket):
        def write(self, data: bytes) -> bool:
            self.writes.append(data)
            return True

    a = PlainSocket("a")
    hub = Hub(Metrics(), framer=None, cork=True)
    hub.register(a)  # type: ignore[arg-type]
    assert hub.deliver(["a"], _event(1)) == 1
    assert a.writes == [JSON.encode(_event(1))]  # no frame built, nothing deferred
