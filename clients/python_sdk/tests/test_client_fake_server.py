"""Client behaviour against a scripted in-process fake server.

These do not need the real imserver: each test scripts exactly the frames a
server would send (including misbehaviour such as duplicate events, gaps and
dropped connections), which makes the SDK's retry/dedupe logic deterministic to
test. Tests drive their own event loop with ``asyncio.run`` so they work with
or without pytest-asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from imserver_sdk import Client, ClientClosed, Event, ServerError, get_codec
from imserver_sdk.codec import Codec, codec_for_subprotocol

Frame = dict[str, Any]
AUTH_DATA: Frame = {
    "user": "alice",
    "device": "pc",
    "server_time": 1,
    "expires_at": 2,
    "limits": {"max_text_chars": 5000},
}


class FakeConn:
    """One accepted connection, speaking frames in the negotiated codec."""

    def __init__(self, ws: ServerConnection, index: int) -> None:
        self.ws = ws
        self.index = index
        self.codec: Codec = codec_for_subprotocol(ws.subprotocol)

    async def recv(self) -> Frame:
        raw = await self.ws.recv()
        if self.codec.binary:
            assert isinstance(raw, bytes), "msgpack frames must be binary"
        else:
            assert isinstance(raw, str), "json frames must be text"
        return self.codec.decode(raw)

    async def send(self, frame: Frame) -> None:
        await self.ws.send(self.codec.encode(frame))

    async def result(self, req: Frame, data: Frame) -> None:
        await self.send({"type": "result", "id": req["id"], "data": data})

    async def event(self, name: str, data: Frame) -> None:
        await self.send({"type": "event", "event": name, "data": data})

    async def auth(self, data: Frame | None = None) -> Frame:
        req = await self.recv()
        assert req["type"] == "auth"
        await self.result(req, data or AUTH_DATA)
        return req

    async def expect(self, type_: str) -> Frame:
        """Receive the next request of ``type_``, answering pings on the way."""
        while True:
            req = await self.recv()
            if req["type"] == "ping":
                await self.send({"type": "pong", "id": req["id"]})
                continue
            assert req["type"] == type_, req
            return req

    async def serve_empty_sync(self) -> Frame:
        req = await self.expect("sync")
        await self.result(req, {"conversations": [], "more": False})
        return req


Script = Callable[[FakeConn], Awaitable[None]]


class FakeServer:
    """Runs ``script`` for every accepted connection (``conn.index`` 0, 1, ...)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.count = 0
        self.errors: list[BaseException] = []
        self.server: Server | None = None

    async def _handle(self, ws: ServerConnection) -> None:
        conn = FakeConn(ws, self.count)
        self.count += 1
        try:
            await self.script(conn)
            # Keep the socket open until the client goes away.
            await ws.wait_closed()
        except Exception as exc:  # surfaced by the test via `errors`
            if not isinstance(exc, ConnectionError) and "ConnectionClosed" not in repr(type(exc)):
                self.errors.append(exc)

    async def __aenter__(self) -> FakeServer:
        self.server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol("imserver.v1.json"), Subprotocol("imserver.v1.msgpack")],
            compression=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def msg(conv: str, seq: int, text: str = "x", **extra: Any) -> Frame:
    return {
        "conv": conv,
        "seq": seq,
        "sender": "bob",
        "device": "pc",
        "kind": "text",
        "body": {"text": text},
        "ts": 1000 + seq,
        "client_msg_id": f"c{seq}",
        "recalled": False,
        **extra,
    }


def fast_client(url: str, token: Any = "tok", **kw: Any) -> Client:
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("request_timeout", 2.0)
    return Client(url, token, **kw)


# --------------------------------------------------------------------- tests


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_auth_requests_errors_and_pong(codec: str) -> None:
    seen: list[Frame] = []

    async def script(c: FakeConn) -> None:
        assert c.codec is get_codec(codec)
        seen.append(await c.auth())
        await c.serve_empty_sync()
        req = await c.expect("read")
        seen.append(req)
        await c.result(req, {"conv": "g:1", "read_seq": 4, "unread": 0})
        req = await c.expect("group.rename")
        await c.send(
            {
                "type": "error",
                "id": req["id"],
                "code": "invalid_field",
                "message": "bad name",
                "field": "name",
            }
        )
        req = await c.recv()
        assert req["type"] == "ping"
        await c.send({"type": "pong", "id": req["id"]})

    async def main() -> None:
        async with FakeServer(script) as srv, fast_client(srv.url, codec=codec) as cl:
            assert (cl.user, cl.device, cl.limits) == ("alice", "pc", {"max_text_chars": 5000})
            assert cl.connected
            assert await cl.read("g:1", 4) == {"conv": "g:1", "read_seq": 4, "unread": 0}
            with pytest.raises(ServerError) as ei:
                await cl.rename_group("g:1", "")
            assert (ei.value.code, ei.value.field) == ("invalid_field", "name")
            assert await cl.ping() >= 0
            assert not srv.errors

    run(main())
    assert seen[0] == {"type": "auth", "id": 1, "token": "tok"}
    assert seen[1]["conv"] == "g:1" and seen[1]["seq"] == 4 and isinstance(seen[1]["id"], int)


def test_auth_failure_raises_and_records_close_code() -> None:
    async def script(c: FakeConn) -> None:
        req = await c.recv()
        await c.send(
            {
                "type": "error",
                "id": req["id"],
                "code": "token_expired",
                "message": "",
                "field": None,
            }
        )
        await c.ws.close(4002, "auth failed")

    async def main() -> None:
        async with FakeServer(script) as srv:
            cl = fast_client(srv.url)
            with pytest.raises(ServerError) as ei:
                await cl.connect()
            assert ei.value.code == "token_expired"
            assert cl.close_code == 4002
            assert not cl.connected
            await asyncio.sleep(0.1)
            assert srv.count == 1  # no reconnect

    run(main())


def test_events_are_deduped_and_gaps_trigger_sync() -> None:
    syncs: list[Frame] = []

    async def script(c: FakeConn) -> None:
        await c.auth()
        await c.serve_empty_sync()
        await c.event("message", msg("g:1", 1))
        await c.event("message", msg("g:1", 1))  # at-least-once duplicate
        await c.event("presence", {"user": "bob", "online": True})
        await c.event("message", msg("g:1", 4))  # gap: 2 and 3 missing
        req = await c.expect("sync")
        syncs.append(req)
        await c.result(
            req,
            {
                "conversations": [
                    {
                        "conv": "g:1",
                        "kind": "group",
                        "name": "n",
                        "peer": None,
                        "last_seq": 4,
                        "read_seq": 0,
                        "unread": 4,
                        "messages": [msg("g:1", 2), msg("g:1", 3), msg("g:1", 4)],
                        "more": False,
                    }
                ],
                "more": False,
            },
        )

    async def main() -> None:
        async with FakeServer(script) as srv, fast_client(srv.url) as cl:
            got: list[Event] = []
            for _ in range(5):
                got.append(await cl.next_event())
            names = [(e.name, e.data.get("seq")) for e in got]
            assert names == [
                ("message", 1),
                ("presence", None),
                ("message", 4),
                ("message", 2),
                ("message", 3),
            ]
            assert [m["seq"] for m in cl.messages("g:1")] == [1, 2, 3, 4]
            assert cl.last_seq("g:1") == 4
            assert cl.conversations()["g:1"]["unread"] == 4
            with pytest.raises(TimeoutError):
                await cl.next_event(timeout=0.2)
            assert not srv.errors

    run(main())
    assert syncs[0]["since"] == {"g:1": 1}


def test_sync_pages_until_more_is_false_and_counts_new() -> None:
    async def script(c: FakeConn) -> None:
        await c.auth()
        req = await c.expect("sync")
        assert req["since"] == {}
        await c.result(
            req,
            {
                "conversations": [
                    {
                        "conv": "dm:a:b",
                        "messages": [msg("dm:a:b", 1), msg("dm:a:b", 2)],
                        "more": True,
                    }
                ],
                "more": False,
            },
        )
        req = await c.expect("sync")
        assert req["since"] == {"dm:a:b": 2}
        await c.result(
            req,
            {
                "conversations": [
                    # a repeat of 2 (dropped) and a group we joined late at seq 7
                    {"conv": "dm:a:b", "messages": [msg("dm:a:b", 2), msg("dm:a:b", 3)]},
                    {"conv": "g:late", "messages": [msg("g:late", 7)], "more": False},
                ],
                "more": True,
            },
        )
        req = await c.expect("sync")
        assert req["since"] == {"dm:a:b": 3, "g:late": 7}
        await c.result(req, {"conversations": [], "more": False})

    async def main() -> None:
        async with FakeServer(script) as srv:
            cl = fast_client(srv.url, auto_sync=False)
            await cl.connect()
            assert await cl.sync() == 4
            assert cl.last_seq("g:late") == 7  # unreachable history is not a gap
            assert not cl.tracker.has_gap("g:late")
            assert [e.data["seq"] for e in cl.drain_events()] == [1, 2, 3, 7]
            await cl.close()
            assert not srv.errors

    run(main())


def test_send_is_resent_with_same_client_msg_id_after_drop() -> None:
    sends: list[Frame] = []
    tokens: list[str] = []

    async def script(c: FakeConn) -> None:
        req = await c.auth()
        tokens.append(req["token"])
        if c.index == 0:
            await c.serve_empty_sync()
            sends.append(await c.expect("send"))
            await c.expect("group.list")
            await c.ws.close(1011, "boom")  # drop with both unanswered
            return
        # The resync and the resend may arrive in either order.
        while True:
            send = await c.recv()
            if send["type"] == "sync":
                await c.result(send, {"conversations": [], "more": False})
                continue
            assert send["type"] == "send", send
            break
        sends.append(send)
        await c.result(
            send,
            {
                "conv": "dm:alice:bob",
                "seq": 9,
                "ts": 5,
                "client_msg_id": send["client_msg_id"],
                "duplicate": True,
            },
        )

    counter = iter(range(100))

    async def provider() -> str:
        return f"tok{next(counter)}"

    async def main() -> None:
        async with FakeServer(script) as srv, fast_client(srv.url, provider) as cl:
            send_task = asyncio.create_task(cl.send_text("hi", to="bob", mentions=["bob"]))
            await asyncio.sleep(0.05)
            with pytest.raises(ClientClosed) as ei:
                await cl.list_groups()
            assert ei.value.code == 1011
            ack = await send_task
            assert (ack.conv, ack.seq, ack.duplicate) == ("dm:alice:bob", 9, True)
            assert cl.reconnects == 1
            assert cl.close_code == 1011
            assert not srv.errors

    run(main())
    assert tokens == ["tok0", "tok1"]
    assert len(sends) == 2
    assert sends[0]["client_msg_id"] == sends[1]["client_msg_id"]
    assert len(sends[0]["client_msg_id"]) == 32
    assert sends[0]["body"] == {"text": "hi", "mentions": ["bob"]}
    assert sends[0]["to"] == "bob" and "conv" not in sends[0]
    assert sends[0]["id"] != sends[1]["id"]


def test_replaced_connection_is_not_reconnected() -> None:
    async def script(c: FakeConn) -> None:
        await c.auth()
        await c.serve_empty_sync()
        await c.event("read", {"conv": "dm:a:b", "user": "bob", "seq": 3})
        await c.ws.close(4010, "replaced")

    async def main() -> None:
        async with FakeServer(script) as srv:
            cl = fast_client(srv.url)
            await cl.connect()
            assert await cl.wait_closed(timeout=5) == 4010
            assert not cl.connected
            # Queued events are still delivered, then the stream ends.
            assert (await cl.next_event("read")).data["seq"] == 3
            with pytest.raises(ClientClosed) as ei:
                await cl.next_event(timeout=1)
            assert ei.value.code == 4010
            with pytest.raises(ClientClosed):
                await cl.send_text("x", to="bob")
            assert [e async for e in cl.events()] == []
            await asyncio.sleep(0.1)
            assert srv.count == 1
            await cl.close()

    run(main())


@pytest.mark.parametrize("code", [1012, 4008, 4011])
def test_reconnects_and_resyncs_after_recoverable_close(code: int) -> None:
    async def script(c: FakeConn) -> None:
        await c.auth()
        req = await c.expect("sync")
        if c.index == 0:
            await c.result(
                req,
                {"conversations": [{"conv": "g:1", "messages": [msg("g:1", 1)]}], "more": False},
            )
            await c.ws.close(code, "bye")
            return
        assert req["since"] == {"g:1": 1}
        await c.result(
            req, {"conversations": [{"conv": "g:1", "messages": [msg("g:1", 2)]}], "more": False}
        )

    async def main() -> None:
        async with FakeServer(script) as srv, fast_client(srv.url) as cl:
            first = await cl.next_event("message")
            second = await cl.next_event("message")
            assert (first.data["seq"], second.data["seq"]) == (1, 2)
            await cl.wait_connected(timeout=5)
            assert cl.reconnects == 1
            assert cl.close_code == code
            assert not srv.errors

    run(main())


def test_recall_hides_held_target() -> None:
    async def script(c: FakeConn) -> None:
        await c.auth()
        await c.serve_empty_sync()
        await c.event("message", msg("g:1", 1, "secret"))
        await c.event(
            "message", msg("g:1", 2, kind="recall", body={"target_seq": 1}, client_msg_id=None)
        )

    async def main() -> None:
        async with FakeServer(script) as srv, fast_client(srv.url) as cl:
            await cl.next_event("message", predicate=lambda e: e.data["seq"] == 2)
            held = cl.messages("g:1")
            assert held[0]["recalled"] is True and held[0]["body"] == {}
            assert held[1]["kind"] == "recall"

    run(main())


def test_request_while_never_connected_raises_client_closed() -> None:
    async def main() -> None:
        cl = Client("ws://127.0.0.1:9/", "tok")
        with pytest.raises(ClientClosed):
            await cl.request("ping")
        await cl.close()

    run(main())


def test_a_resync_event_runs_sync_and_is_passed_on() -> None:
    """The server's node missed events (its bus reconnected): resume as after a reconnect."""

    async def script(c: FakeConn) -> None:
        await c.auth()
        await c.serve_empty_sync()
        await c.event("resync", {"reason": "bus_reconnected"})
        req = await c.expect("sync")  # without the event, no second sync would come
        await c.result(
            req,
            {
                "conversations": [
                    {
                        "conv": "g:1",
                        "kind": "group",
                        "name": "n",
                        "peer": None,
                        "last_seq": 1,
                        "read_seq": 0,
                        "unread": 1,
                        "messages": [msg("g:1", 1)],
                        "more": False,
                    }
                ],
                "more": False,
            },
        )

    async def main() -> None:
        async with FakeServer(script) as srv, fast_client(srv.url) as cl:
            first = await cl.next_event()
            assert (first.name, first.data) == ("resync", {"reason": "bus_reconnected"})
            missed = await cl.next_event()
            assert (missed.name, missed.data["seq"]) == ("message", 1)
            assert not srv.errors

    run(main())
