"""Revocation reaches live app streams (docs/cards.md "Stream mode", "Closes").

Deleting an app closes its streams with 4401 on every node; rotating its
secret closes the streams whose handshake the old secret signed with 4402,
when that secret stops verifying (at once with ``overlap_s`` 0, at the end of
the overlap otherwise); streams on the new secret stay and keep receiving.
Real servers on loopback, raw aiohttp WebSockets and the SDK's ``AppStream``;
the two-node test runs on PostgreSQL and the Redis bus.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cards.stream import CLOSE_APP_DELETED, CLOSE_SECRET_RETIRED
from imserver_sdk import AppStream, BusinessClient, BusinessError, Client, sign_request
from imserver_sdk.signing import verify_signature
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, approval_card
from tests.conftest import StartServer
from tests.postgres_support import drop_schema, fresh_dsn
from tests.redis_support import fresh_prefix, require_redis
from tests.support import Harness, make_test_config, start_harness, stop_harness

APP = "oa"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: An ack may take its time here: a delivery ends because the stream closes, not by timeout.
SETTINGS = {**CARD_SETTINGS, "callback_timeout_s": 10}


@pytest.fixture
async def server(start_server: StartServer) -> Harness:
    h: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=SETTINGS)
    return h


async def admin(h: Harness, method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, h.world.http_url + path, headers=ADMIN, json=body) as r,
    ):
        answer: dict[str, Any] = await r.json()
        assert r.status in (200, 201), answer
        return answer


async def register(h: Harness, secret: str) -> None:
    app = {"app_id": APP, "secret": secret, "callback_url": "", "scope": ["*"]}
    await admin(h, "POST", "/admin/v1/apps", app)


async def rotate(h: Harness, secret: str, overlap_s: float) -> dict[str, Any]:
    body = {"secret": secret, "overlap_s": overlap_s}
    return await admin(h, "POST", f"/admin/v1/apps/{APP}/secret", body)


class RawStream:
    """One stream connection held with aiohttp, as any business system would."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session, self.ws = session, ws

    @classmethod
    async def open(cls, h: Harness, secret: str) -> RawStream:
        session = aiohttp.ClientSession()
        headers = sign_request(APP, secret, b"")
        ws = await session.ws_connect(h.world.http_url + "/api/v1/stream", headers=headers)
        hello = orjson.loads((await ws.receive(timeout=5)).data)
        assert hello["type"] == "hello" and hello["app_id"] == APP, hello
        return cls(session, ws)

    async def frame(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        doc: dict[str, Any] = orjson.loads(msg.data)
        return doc

    async def closed_with(self, timeout: float) -> tuple[int | None, str]:
        """The close code and reason, if the server closes within ``timeout`` (else raises)."""
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), (msg.type, msg)
        return self.ws.close_code, str(msg.extra or "")

    async def stays_open(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            msg = await self.ws.receive(timeout=seconds)
            raise AssertionError(f"stream got {msg.type} {msg.data!r} {msg.extra!r}")

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


@pytest.fixture
async def streams() -> AsyncIterator[list[RawStream]]:
    opened: list[RawStream] = []
    yield opened
    for s in opened:
        await s.close()


async def open_stream(h: Harness, secret: str, opened: list[RawStream]) -> RawStream:
    s = await RawStream.open(h, secret)
    opened.append(s)
    return s


async def until(pred: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.02)


async def click(c: Client, card_id: str) -> str:
    action_id = uuid.uuid4().hex
    await c.request("card.act", card_id=card_id, action="approve", action_id=action_id, inputs={})
    return action_id


async def settled(h: Harness, card_id: str, action_id: str, state: str) -> Any:
    """The outbox item once it reaches ``state`` (within 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        item = await h.world.store.get_callback(card_id, action_id)
        assert item is not None
        if item.state == state:
            return item
        assert time.monotonic() < deadline, f"callback still {item.state}: {item.last_error}"
        await asyncio.sleep(0.05)


async def until_card_callback(c: Client, card_id: str, state: str) -> None:
    """What the card's holder sees of its callback reaches ``state`` (within 5 s)."""
    deadline = time.monotonic() + 5
    while (card := await c.request("card.get", card_id=card_id))["callback"] != state:
        assert time.monotonic() < deadline, card
        await asyncio.sleep(0.05)


async def test_deleting_the_app_closes_its_streams_and_fails_what_they_held(
    server: Harness, streams: list[RawStream]
) -> None:
    secret = secrets.token_urlsafe(32)
    await register(server, secret)
    stream = await open_stream(server, secret, streams)
    li = await server.client("li")
    async with BusinessClient(server.world.http_url, APP, secret) as oa:
        held = (await oa.push_card(approval_card("d1", ["li"]), users=["li"]))["card_id"]
        late = (await oa.push_card(approval_card("d2", ["li"]), users=["li"]))["card_id"]
    in_flight = await click(li, held)
    frame = await stream.frame()  # delivered, and deliberately not acknowledged
    assert frame["type"] == "callback" and frame["action_id"] == in_flight

    started = time.monotonic()
    await admin(server, "DELETE", f"/admin/v1/apps/{APP}")
    code, reason = await stream.closed_with(timeout=2.0)
    assert (code, reason) == (CLOSE_APP_DELETED, "app deleted")
    assert time.monotonic() - started < 2.0
    await until(lambda: server.world.callbacks.streams.count(APP) == 0, what="stream removed")

    # The unacknowledged item failed as on any dropped stream (one attempt), then for good.
    item = await settled(server, held, in_flight, "failed")
    assert item.attempts == 2 and item.last_error == f"app {APP} no longer exists"
    deliveries = server.world.metrics.stream_deliveries
    assert deliveries.labels("closed")._value.get() == 1
    assert deliveries.labels("acked")._value.get() == 0
    # A click after the deletion reaches no stream: its callback fails at once.
    after = await click(li, late)
    item = await settled(server, late, after, "failed")
    assert item.attempts == 1 and item.last_error == f"app {APP} no longer exists"
    assert deliveries.labels("closed")._value.get() == 1, "nothing more was sent on a stream"
    await until_card_callback(li, late, "failed")


async def test_a_deleted_apps_sdk_stream_stops_instead_of_reconnecting(server: Harness) -> None:
    secret = secrets.token_urlsafe(32)
    await register(server, secret)

    async def handler(action: Any) -> None:
        return None

    sdk = AppStream(server.world.http_url, APP, secret, handler, backoff_initial_s=0.05)
    running = asyncio.create_task(sdk.run())
    try:
        await asyncio.wait_for(sdk.connected.wait(), 5)
        await admin(server, "DELETE", f"/admin/v1/apps/{APP}")
        # Closed with 4401, one reconnect after the backoff, refused: run() ends with the code.
        with pytest.raises(BusinessError) as refused:
            await asyncio.wait_for(running, 5)
    finally:
        running.cancel()
    assert (refused.value.status, refused.value.code) == (401, "unknown_app")
    assert sdk.connections == 1


async def test_an_sdk_stream_on_a_retired_secret_stops_instead_of_reconnecting(
    server: Harness,
) -> None:
    old = secrets.token_urlsafe(32)
    await register(server, old)

    async def handler(action: Any) -> None:
        return None

    sdk = AppStream(server.world.http_url, APP, old, handler, backoff_initial_s=0.05)
    running = asyncio.create_task(sdk.run())
    try:
        await asyncio.wait_for(sdk.connected.wait(), 5)
        await rotate(server, secrets.token_urlsafe(32), overlap_s=0)
        with pytest.raises(BusinessError) as refused:
            await asyncio.wait_for(running, 5)
    finally:
        running.cancel()
    assert (refused.value.status, refused.value.code) == (401, "bad_signature")
    assert sdk.connections == 1


async def test_rotation_without_overlap_closes_old_secret_streams_at_once(
    server: Harness, streams: list[RawStream]
) -> None:
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await register(server, old)
    before = await open_stream(server, old, streams)
    await rotate(server, new, overlap_s=0)
    code, reason = await before.closed_with(timeout=2.0)
    assert code == CLOSE_SECRET_RETIRED and reason.startswith("secret retired"), reason

    after = await open_stream(server, new, streams)
    newest = secrets.token_urlsafe(32)
    await rotate(server, newest, overlap_s=600)  # a later rotation, with an overlap:
    await after.stays_open(0.5)  # the stream on the now-previous secret stays for it
    li = await server.client("li")
    async with BusinessClient(server.world.http_url, APP, newest) as oa:
        card_id = (await oa.push_card(approval_card("r1", ["li"]), users=["li"]))["card_id"]
    action_id = await click(li, card_id)
    frame = await after.frame()
    assert frame["type"] == "callback" and frame["action_id"] == action_id
    verify_signature(newest, frame["headers"], frame["body"].encode())  # signed with the current
    await after.ws.send_str(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())
    item = await settled(server, card_id, action_id, "delivered")
    assert item.attempts == 1


async def test_rotation_with_overlap_closes_old_secret_streams_when_it_ends(
    server: Harness, streams: list[RawStream]
) -> None:
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await register(server, old)
    before = await open_stream(server, old, streams)
    rotated_at = time.monotonic()
    await rotate(server, new, overlap_s=1)
    during = await open_stream(server, old, streams)  # the old secret still verifies
    on_new = await open_stream(server, new, streams)
    await before.stays_open(0.6)
    assert not during.ws.closed

    code, _ = await before.closed_with(timeout=2.0)
    elapsed = time.monotonic() - rotated_at
    assert code == CLOSE_SECRET_RETIRED
    assert 0.9 <= elapsed < 2.0, elapsed
    code, _ = await during.closed_with(timeout=0.5)  # opened in the overlap: closed with it
    assert code == CLOSE_SECRET_RETIRED
    await on_new.stays_open(0.3)
    assert server.world.callbacks.streams.count(APP) == 1


async def test_an_in_flight_item_of_a_retired_stream_goes_to_the_new_one_once(
    server: Harness, streams: list[RawStream]
) -> None:
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await register(server, old)
    before = await open_stream(server, old, streams)
    li = await server.client("li")
    async with BusinessClient(server.world.http_url, APP, old) as oa:
        card_id = (await oa.push_card(approval_card("f1", ["li"]), users=["li"]))["card_id"]
    action_id = await click(li, card_id)
    first = await before.frame()  # not acknowledged
    await rotate(server, new, overlap_s=0)
    assert (await before.closed_with(timeout=2.0))[0] == CLOSE_SECRET_RETIRED
    after = await open_stream(server, new, streams)
    again = await after.frame()
    assert again["action_id"] == action_id and again["id"] != first["id"]
    await after.ws.send_str(orjson.dumps({"type": "ack", "id": again["id"]}).decode())
    item = await settled(server, card_id, action_id, "delivered")
    assert item.attempts == 2, "the closed delivery counted once, the ack once"
    deliveries = server.world.metrics.stream_deliveries
    assert deliveries.labels("closed")._value.get() == 1
    assert deliveries.labels("acked")._value.get() == 1


# -- two nodes: PostgreSQL + Redis --------------------------------------------------------


@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[Harness, Harness]]:
    dsn, schema = fresh_dsn()
    shared: dict[str, dict[str, Any]] = {
        "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "bus": {"backend": "redis", "channel_prefix": fresh_prefix(), "redis_url": require_redis()},
        "auth": {"secret": "s" * 40, "admin_api_key": ADMIN_KEY},
        "cards": SETTINGS,
    }
    a = await start_harness(make_test_config(tmp_path / "a", shared))
    b = await start_harness(make_test_config(tmp_path / "b", shared))
    try:
        yield a, b
    finally:
        await stop_harness(a)
        await stop_harness(b)
        drop_schema(schema)


async def test_deleting_on_one_node_closes_the_stream_held_on_another(
    two_nodes: tuple[Harness, Harness], streams: list[RawStream]
) -> None:
    a, b = two_nodes
    secret = secrets.token_urlsafe(32)
    await register(a, secret)
    on_b = await open_stream(b, secret, streams)
    await until(lambda: b.world.callbacks.streams.count(APP) == 1, what="stream on node B")
    assert a.world.callbacks.streams.count(APP) == 0
    started = time.monotonic()
    await admin(a, "DELETE", f"/admin/v1/apps/{APP}")
    code, reason = await on_b.closed_with(timeout=2.0)
    assert (code, reason) == (CLOSE_APP_DELETED, "app deleted")
    assert time.monotonic() - started < 2.0
    await until(lambda: b.world.callbacks.streams.count(APP) == 0, what="node B removed it")


async def test_a_node_started_with_a_new_secret_in_its_apps_file_closes_old_streams_elsewhere(
    tmp_path: Path, streams: list[RawStream]
) -> None:
    """The file, not the admin API, replaces the secret: node B's start announces it, so
    node A closes the stream the old secret signed instead of keeping it until it drops."""
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)

    def apps_file(node: str, secret: str) -> str:
        path = tmp_path / f"apps-{node}.toml"
        path.write_text(
            f'[[app]]\napp_id = "{APP}"\nsecret = "{secret}"\ncallback_url = ""\nscope = ["*"]\n'
        )
        return str(path)

    dsn, schema = fresh_dsn()
    shared: dict[str, dict[str, Any]] = {
        "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "bus": {"backend": "redis", "channel_prefix": fresh_prefix(), "redis_url": require_redis()},
        "auth": {"secret": "s" * 40, "admin_api_key": ADMIN_KEY},
    }
    a = await start_harness(
        make_test_config(
            tmp_path / "a", {**shared, "cards": {**SETTINGS, "apps_file": apps_file("a", old)}}
        )
    )
    try:
        on_a = await open_stream(a, old, streams)
        await until(lambda: a.world.callbacks.streams.count(APP) == 1, what="stream on node A")
        b_cards = {**SETTINGS, "apps_file": apps_file("b", new)}
        b = await start_harness(make_test_config(tmp_path / "b", {**shared, "cards": b_cards}))
        try:
            code, reason = await on_a.closed_with(timeout=3.0)
            assert code == CLOSE_SECRET_RETIRED and reason.startswith("secret retired"), reason
            fresh = await open_stream(a, new, streams)  # node A verifies with the file's new secret
            await fresh.stays_open(0.5)
        finally:
            await stop_harness(b)
    finally:
        await stop_harness(a)
        drop_schema(schema)
