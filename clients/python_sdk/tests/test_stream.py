"""Stream mode (docs/cards.md "Stream mode"): ``AppStream`` / ``BusinessClient.stream``.

A real aiohttp server on 127.0.0.1 plays imserver's ``GET /api/v1/stream``:
it checks the handshake's signature, sends ``callback`` frames signed as the
server signs HTTP callbacks, and records the app's answers. (The same SDK code
runs against the real server in tests/integration/test_stream_mode.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from imserver_sdk import AppStream, BusinessClient, BusinessError, CallbackAction, sign_request
from imserver_sdk.signing import SignatureError, verify_signature

SECRET = "oa-stream-secret-0123456789abcdef"


def payload(action_id: str) -> dict[str, Any]:
    return {
        "type": "card.action",
        "app_id": "oa",
        "action_id": action_id,
        "card_id": "c_1",
        "out_track_id": "leave-1",
        "version": 2,
        "actor": "li",
        "action": "approve",
        "decision": "approve",
        "inputs": {},
        "state": "approved",
        "at": 1,
    }


class FakeStreamServer:
    """Accepts signed stream handshakes; ``send`` delivers, ``answers`` collects replies."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sockets: list[web.WebSocketResponse] = []
        self.handshakes = 0
        self.close_after_hello = 0  # close this many fresh connections right after hello
        self._next = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            verify_signature(SECRET, request.headers, await request.read())
        except SignatureError as e:
            return web.json_response({"error": {"code": e.code, "message": e.message}}, status=401)
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": {"code": "bad_request", "message": "x"}}, status=400)
        await ws.prepare(request)
        self.handshakes += 1
        await ws.send_json({"type": "hello", "app_id": "oa"})
        if self.close_after_hello:
            self.close_after_hello -= 1
            await ws.close()
            return ws
        self.sockets.append(ws)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await self.answers.put(json.loads(msg.data))
        return ws

    async def send(
        self, doc: dict[str, Any], *, secret: str = SECRET, action_id: str | None = None
    ) -> str:
        """Deliver ``doc`` on the newest socket as the server does; returns the frame id."""
        self._next += 1
        body = json.dumps(doc, ensure_ascii=False).encode()
        headers = sign_request("oa", secret, body)
        key = action_id or doc["action_id"]
        headers["X-Imserver-Action-Id"] = key
        frame_id = f"d{self._next}"
        frame = {"type": "callback", "id": frame_id, "action_id": key}
        await self.sockets[-1].send_json({**frame, "headers": headers, "body": body.decode()})
        return frame_id

    async def answer(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.answers.get(), 5)


@pytest.fixture
async def fake() -> AsyncIterator[FakeStreamServer]:
    server = FakeStreamServer()
    app = web.Application()
    app.router.add_get("/api/v1/stream", server.handle)
    server.runner = web.AppRunner(app)
    await server.runner.setup()
    site = web.TCPSite(server.runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{server.runner.addresses[0][1]}"
    yield server
    for ws in server.sockets:
        await ws.close()
    await server.runner.cleanup()


async def running(stream: AppStream) -> asyncio.Task[None]:
    task = asyncio.create_task(stream.run())
    await asyncio.wait_for(stream.connected.wait(), 5)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_ack_carries_the_card_update_and_a_repeat_is_acked_unhandled(
    fake: FakeStreamServer,
) -> None:
    seen: list[CallbackAction] = []

    async def handler(a: CallbackAction) -> dict[str, Any]:
        seen.append(a)
        return {"status": {"text": "已同意", "color": "green"}}

    task = await running(AppStream(fake.url, "oa", SECRET, handler))
    first = await fake.send(payload("a1"))
    assert await fake.answer() == {
        "type": "ack",
        "id": first,
        "card_update": {"status": {"text": "已同意", "color": "green"}},
    }
    again = await fake.send(payload("a1"))  # a redelivery: new id, new nonce
    assert await fake.answer() == {"type": "ack", "id": again}
    assert [a.action_id for a in seen] == ["a1"] and seen[0].actor == "li"
    await stop(task)


async def test_a_failing_handler_nacks_and_the_redelivery_runs_it_again(
    fake: FakeStreamServer,
) -> None:
    calls = 0

    async def handler(a: CallbackAction) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database down")

    task = await running(AppStream(fake.url, "oa", SECRET, handler))
    first = await fake.send(payload("a1"))
    assert await fake.answer() == {
        "type": "nack",
        "id": first,
        "error": "handler_failed: RuntimeError",
    }
    again = await fake.send(payload("a1"))
    assert await fake.answer() == {"type": "ack", "id": again}
    assert calls == 2
    await stop(task)


async def test_a_frame_not_signed_with_the_secret_is_refused(fake: FakeStreamServer) -> None:
    async def handler(a: CallbackAction) -> None:
        raise AssertionError("an unverified callback reached the handler")

    task = await running(AppStream(fake.url, "oa", SECRET, handler))
    forged = await fake.send(payload("a1"), secret="x" * 40)
    assert await fake.answer() == {"type": "nack", "id": forged, "error": "bad_signature"}
    await stop(task)


async def test_items_that_are_not_card_actions_go_to_on_event(fake: FakeStreamServer) -> None:
    events: list[dict[str, Any]] = []

    async def handler(a: CallbackAction) -> None:
        raise AssertionError("not a card action")

    async def on_event(doc: dict[str, Any]) -> None:
        events.append(doc)

    task = await running(AppStream(fake.url, "oa", SECRET, handler, on_event=on_event))
    event = {"type": "event", "event": "overdue", "event_id": "e1", "app_id": "oa", "at": 1}
    frame_id = await fake.send(event, action_id="e1")
    assert await fake.answer() == {"type": "ack", "id": frame_id}
    again = await fake.send(event, action_id="e1")  # a repeat, dropped by event_id
    assert await fake.answer() == {"type": "ack", "id": again}
    assert [(e["type"], e["event"]) for e in events] == [("event", "overdue")]
    await stop(task)


async def test_it_reconnects_after_the_server_closes(fake: FakeStreamServer) -> None:
    got = asyncio.Event()

    async def handler(a: CallbackAction) -> None:
        got.set()

    fake.close_after_hello = 2
    stream = AppStream(fake.url, "oa", SECRET, handler, backoff_initial_s=0.01)
    task = asyncio.create_task(stream.run())
    for _ in range(500):
        if fake.sockets:
            break
        await asyncio.sleep(0.01)
    assert fake.handshakes == 3 and stream.connections == 3  # every handshake freshly signed
    await asyncio.wait_for(stream.connected.wait(), 5)
    await fake.send(payload("a1"))
    await asyncio.wait_for(got.wait(), 5)
    await stop(task)


async def test_a_refused_handshake_raises_the_servers_code(fake: FakeStreamServer) -> None:
    async def handler(a: CallbackAction) -> None:
        pass

    async with BusinessClient(fake.url, "oa", "w" * 40) as biz:
        with pytest.raises(BusinessError) as e:
            await asyncio.wait_for(biz.stream(handler), 5)
    assert (e.value.status, e.value.code) == (401, "bad_signature")
    assert fake.handshakes == 0
