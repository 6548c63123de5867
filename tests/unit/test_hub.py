"""Unit tests for imserver/hub.py: the local registry of sockets and fan-out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson

from imserver.hub import Hub
from imserver.metrics import Metrics
from imserver.protocol.codec import JSON, MSGPACK, Codec
from imserver.protocol.frames import CLOSE_IDLE_TIMEOUT, CLOSE_REPLACED, event_frame

FRAME = event_frame("message", {"conv": "dm:alice:bob", "seq": 1, "body": {"text": "hi"}})


@dataclass(eq=False)
class FakeSocket:
    """In-memory stand-in for a session: records what the hub writes and closes."""

    user: str
    device: str
    codec: Codec = JSON
    last_activity: float = 0.0
    watching: set[str] = field(default_factory=set)
    writes: list[bytes] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)
    closed: bool = False

    def write(self, data: bytes) -> bool:
        if self.closed:
            return False
        self.writes.append(data)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.closed = True

    def frames(self) -> list[dict[str, Any]]:
        if self.codec.name == MSGPACK.name:
            return [msgpack.unpackb(w, raw=False) for w in self.writes]
        return [orjson.loads(w) for w in self.writes]


class CountingCodec:
    """Wraps a real codec and counts encode calls."""

    def __init__(self, inner: Codec) -> None:
        self.inner = inner
        self.encodes = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def text(self) -> bool:
        return self.inner.text

    def encode(self, frame: dict[str, Any]) -> bytes:
        self.encodes += 1
        return self.inner.encode(frame)

    def decode(self, data: bytes | str, max_bytes: int) -> dict[str, Any]:
        return self.inner.decode(data, max_bytes)


def _hub() -> tuple[Hub, Metrics]:
    metrics = Metrics()
    return Hub(metrics), metrics


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


# -- fan-out ---------------------------------------------------------------------------
def test_deliver_writes_once_to_every_device_of_every_recipient() -> None:
    hub, metrics = _hub()
    alice_phone = FakeSocket("alice", "phone")
    alice_pc = FakeSocket("alice", "pc", codec=MSGPACK)
    bob = FakeSocket("bob", "phone")
    dave = FakeSocket("dave", "phone")  # online, not a recipient
    for s in (alice_phone, alice_pc, bob, dave):
        hub.register(s)

    writes = hub.deliver(["alice", "bob", "carol"], FRAME)  # carol is not connected

    assert writes == 3
    for s in (alice_phone, alice_pc, bob):
        assert s.frames() == [FRAME]
    assert dave.writes == []
    assert _sample(metrics, "imserver_deliveries_total") == 3


def test_deliver_to_nobody_connected_writes_nothing() -> None:
    hub, _ = _hub()
    assert hub.deliver(["ghost", "nobody"], FRAME) == 0
    assert hub.deliver([], FRAME) == 0


def test_deliver_skips_closed_sockets_in_the_count() -> None:
    hub, metrics = _hub()
    live = FakeSocket("alice", "a")
    dead = FakeSocket("alice", "b")
    hub.register(live)
    hub.register(dead)
    dead.closed = True
    assert hub.deliver(["alice"], FRAME) == 1
    assert len(live.writes) == 1 and dead.writes == []
    assert _sample(metrics, "imserver_deliveries_total") == 1


def test_deliver_encodes_once_per_codec() -> None:
    hub, _ = _hub()
    json_codec, mp_codec = CountingCodec(JSON), CountingCodec(MSGPACK)
    socks: list[FakeSocket] = []
    for i in range(100):
        socks.append(FakeSocket(f"user{i % 25}", f"json{i}", codec=json_codec))
        socks.append(FakeSocket(f"user{i % 25}", f"mp{i}", codec=mp_codec))
    for s in socks:
        hub.register(s)
    assert hub.connection_count() == 200

    writes = hub.deliver([f"user{i}" for i in range(25)], FRAME)

    assert writes == 200
    assert json_codec.encodes == 1
    assert mp_codec.encodes == 1
    assert json_codec.encodes + mp_codec.encodes == 2
    json_bytes = {s.writes[0] for s in socks if s.codec is json_codec}
    mp_bytes = {s.writes[0] for s in socks if s.codec is mp_codec}
    assert len(json_bytes) == 1 and len(mp_bytes) == 1  # the same bytes shared
    assert orjson.loads(next(iter(json_bytes))) == FRAME
    assert msgpack.unpackb(next(iter(mp_bytes)), raw=False) == FRAME
    assert all(len(s.writes) == 1 for s in socks)


def test_each_delivery_encodes_afresh() -> None:
    hub, _ = _hub()
    codec = CountingCodec(JSON)
    sock = FakeSocket("alice", "pc", codec=codec)
    hub.register(sock)
    hub.deliver(["alice"], FRAME)
    other = event_frame("message", {"seq": 2})
    hub.deliver(["alice"], other)
    assert codec.encodes == 2
    assert sock.frames() == [FRAME, other]


def test_on_deliver_bus_handler() -> None:
    hub, _ = _hub()
    sock = FakeSocket("bob", "pc")
    hub.register(sock)
    hub.on_deliver({"recipients": ["bob", "nobody"], "frame": FRAME})
    assert sock.frames() == [FRAME]


# -- registry ---------------------------------------------------------------------------
def test_register_reports_first_device_only() -> None:
    hub, metrics = _hub()
    assert hub.register(FakeSocket("alice", "phone")) is True
    assert hub.register(FakeSocket("alice", "pc")) is False
    assert hub.register(FakeSocket("bob", "pc")) is True
    assert hub.is_online("alice") and hub.is_online("bob")
    assert not hub.is_online("carol")
    assert hub.connection_count() == 3
    assert _sample(metrics, "imserver_connections") == 3


def test_register_same_device_replaces_and_closes_older_with_4010() -> None:
    hub, _ = _hub()
    old = FakeSocket("alice", "phone")
    other_device = FakeSocket("alice", "pc")
    hub.register(old)
    hub.register(other_device)
    new = FakeSocket("alice", "phone")
    assert hub.register(new) is False

    assert old.closes == [(CLOSE_REPLACED, old.closes[0][1])]
    assert CLOSE_REPLACED == 4010
    assert new.closes == [] and other_device.closes == []
    assert hub.connection_count() == 2

    hub.deliver(["alice"], FRAME)
    assert old.writes == []
    assert len(new.writes) == 1 and len(other_device.writes) == 1

    # the replaced socket's later unregister must not remove its replacement
    assert hub.unregister(old) is False
    assert hub.connection_count() == 2
    assert hub.is_online("alice")
    assert new in hub.sockets()


def test_register_same_socket_twice_does_not_close_it() -> None:
    hub, _ = _hub()
    sock = FakeSocket("alice", "phone")
    hub.register(sock)
    hub.register(sock)
    assert sock.closes == []
    assert hub.connection_count() == 1


def test_unregister_true_only_when_last_device_goes() -> None:
    hub, metrics = _hub()
    phone, pc = FakeSocket("alice", "phone"), FakeSocket("alice", "pc")
    hub.register(phone)
    hub.register(pc)
    assert hub.unregister(phone) is False
    assert hub.is_online("alice")
    assert hub.unregister(pc) is True
    assert not hub.is_online("alice")
    assert hub.connection_count() == 0
    assert _sample(metrics, "imserver_connections") == 0
    assert hub.unregister(pc) is False  # already gone
    assert hub.unregister(FakeSocket("nobody", "x")) is False


# -- presence ---------------------------------------------------------------------------
def test_presence_watchers_get_a_presence_event() -> None:
    hub, _ = _hub()
    watcher_json = FakeSocket("alice", "pc")
    watcher_mp = FakeSocket("carol", "pc", codec=MSGPACK)
    bystander = FakeSocket("dave", "pc")
    for s in (watcher_json, watcher_mp, bystander):
        hub.register(s)
    hub.watch(watcher_json, ["bob", "erin"])
    hub.watch(watcher_mp, ["bob"])
    assert watcher_json.watching == {"bob", "erin"}

    hub.on_presence({"user": "bob", "online": True})
    hub.on_presence({"user": "zed", "online": True})  # nobody watches zed

    expected = event_frame("presence", {"user": "bob", "online": True})
    assert expected == {
        "type": "event",
        "event": "presence",
        "data": {"user": "bob", "online": True},
    }
    assert watcher_json.frames() == [expected]
    assert watcher_mp.frames() == [expected]
    assert bystander.writes == []


def test_presence_encodes_once_per_codec() -> None:
    hub, _ = _hub()
    json_codec, mp_codec = CountingCodec(JSON), CountingCodec(MSGPACK)
    socks = [FakeSocket(f"u{i}", "d", codec=json_codec if i % 2 else mp_codec) for i in range(40)]
    for s in socks:
        hub.register(s)
        hub.watch(s, ["bob"])
    hub.on_presence({"user": "bob", "online": False})
    assert (json_codec.encodes, mp_codec.encodes) == (1, 1)
    assert all(len(s.writes) == 1 for s in socks)


def test_unwatch_and_unregister_stop_presence_events() -> None:
    hub, _ = _hub()
    a, b = FakeSocket("alice", "pc"), FakeSocket("carol", "pc")
    hub.register(a)
    hub.register(b)
    hub.watch(a, ["bob"])
    hub.watch(b, ["bob"])
    hub.unwatch(a, ["bob"])
    assert a.watching == set()
    hub.unregister(b)
    assert b.watching == set()
    hub.on_presence({"user": "bob", "online": True})
    assert a.writes == [] and b.writes == []


# -- housekeeping -----------------------------------------------------------------------
def test_close_idle_closes_only_idle_sockets_with_4011() -> None:
    hub, _ = _hub()
    idle = FakeSocket("alice", "pc", last_activity=800.0)
    busy = FakeSocket("bob", "pc", last_activity=950.0)
    edge = FakeSocket("carol", "pc", last_activity=880.0)  # exactly the timeout: not yet
    for s in (idle, busy, edge):
        hub.register(s)

    assert hub.close_idle(120.0, now=1000.0) == 1

    assert [code for code, _ in idle.closes] == [CLOSE_IDLE_TIMEOUT]
    assert CLOSE_IDLE_TIMEOUT == 4011
    assert busy.closes == [] and edge.closes == []


def test_close_idle_with_nothing_idle() -> None:
    hub, _ = _hub()
    hub.register(FakeSocket("alice", "pc", last_activity=999.0))
    assert hub.close_idle(120.0, now=1000.0) == 0


def test_close_all() -> None:
    hub, _ = _hub()
    socks = [FakeSocket("alice", "a"), FakeSocket("alice", "b"), FakeSocket("bob", "a")]
    for s in socks:
        hub.register(s)
    hub.close_all(1012, "restarting")
    assert all(s.closes == [(1012, "restarting")] for s in socks)
