"""Stream mode (issue #13 item 2): callbacks over the app's own outbound WebSocket.

The business side is a real child process running the SDK's
``BusinessClient.stream()`` (``tests/stream_business.py``), killed with
SIGKILL where the test says so; the server is a real one on loopback, on
SQLite and on PostgreSQL where the outbox is what is being tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cards.stream import NO_STREAM
from imserver.app import stop_world
from imserver.appauth import sign_headers
from imserver.apps_file import load_apps_file
from imserver.errors import ConfigError
from imserver_sdk import BusinessClient, Client, verify_signature
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card
from tests.conftest import StartServer
from tests.postgres_support import fresh_dsn
from tests.processes import REPO
from tests.support import Harness

APP = "oa"
SETTINGS = {**CARD_SETTINGS, "callback_max_attempts": 50}


class BusinessProcess:
    """``python -m tests.stream_business``: one stream connection of the app."""

    def __init__(self, http_url: str, secret: str, log: Path, *flags: str) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "tests.stream_business",
            *flags,
            "--",  # a secret may start with "-" (token_urlsafe): never read it as an option
            http_url,
            APP,
            secret,
            str(log),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, cwd=REPO)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def entries(self, event: str) -> list[str]:
        """The action ids logged with ``event`` ("received" or "handled"), in order."""
        if not self.log.exists():
            return []
        lines = [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]
        return [e["action_id"] for e in lines if e["event"] == event]


@pytest.fixture(params=["sqlite", "postgres"])
async def stream_server(request: pytest.FixtureRequest, start_server: StartServer) -> Harness:
    """A server with the admin API, fast retries and a generous budget, on either store."""
    store: dict[str, Any] = {"backend": "sqlite"}
    if request.param == "postgres":
        dsn, _schema = fresh_dsn()  # dropped with the run's database at exit
        store = {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4}
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards=SETTINGS, store=store
    )
    return server


@pytest.fixture
async def plain_server(start_server: StartServer) -> Harness:
    server: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=SETTINGS)
    return server


@pytest.fixture
def processes() -> Iterator[list[BusinessProcess]]:
    started: list[BusinessProcess] = []
    yield started
    for p in started:
        p.stop()


async def register(server: Harness, secret: str, callback_url: str = "") -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/admin/v1/apps",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"app_id": APP, "secret": secret, "callback_url": callback_url, "scope": ["*"]},
        ) as r,
    ):
        body: dict[str, Any] = await r.json()
        assert r.status == 201, body
        return body


def spawn(
    server: Harness, secret: str, tmp: Path, name: str, procs: list[BusinessProcess], *flags: str
) -> BusinessProcess:
    p = BusinessProcess(server.world.http_url, secret, tmp / f"{name}.jsonl", *flags)
    p.start()
    procs.append(p)
    return p


async def until(pred: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)


async def streams_up(server: Harness, n: int) -> None:
    registry = server.world.callbacks.streams
    await until(lambda: registry.count(APP) == n, what=f"{n} stream(s) of {APP} registered")


async def act(c: Client, card_id: str) -> dict[str, Any]:
    """Approve; the answer, with the ``action_id`` it was sent with."""
    action_id = uuid.uuid4().hex
    answer = await c.request(
        "card.act", card_id=card_id, action="approve", action_id=action_id, inputs={}
    )
    return {**answer, "action_id": action_id}


async def callbacks_ok(biz: BusinessClient, tracks: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for track in tracks:
        while (card := await biz.get_card(track))["callback"] != "ok":
            assert card["callback"] != "failed", card
            assert time.monotonic() < deadline, f"{track}: callback still {card['callback']}"
            await asyncio.sleep(0.05)


async def test_a_click_reaches_a_stream_only_app_and_its_card_update_every_holder(
    stream_server: Harness, processes: list[BusinessProcess], tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(32)
    await register(stream_server, secret)
    business = spawn(stream_server, secret, tmp_path, "biz", processes, "--answer")
    await streams_up(stream_server, 1)
    li, wang = await stream_server.client("li"), await stream_server.client("wang")
    async with BusinessClient(stream_server.world.http_url, APP, secret) as oa:
        card_id = (await oa.push_card(approval_card("s1", ["li"]), users=["li", "wang"]))["card_id"]
        clicked = await act(li, card_id)
        await callbacks_ok(oa, ["s1"])
        final = await oa.get_card("s1")
    assert business.entries("handled") == [clicked["action_id"]]
    assert final["version"] == clicked["version"] + 1
    assert final["status"]["text"] == "已由li同意" and final["callback"] == "ok"
    for c in (li, wang):
        ev = await c.next_event(
            "card",
            predicate=lambda e: (
                e.data["card_id"] == card_id and e.data["version"] == final["version"]
            ),
            timeout=5,
        )
        assert ev.data["status"]["text"] == "已由li同意" and ev.data["callback"] == "ok"
    metrics = stream_server.world.metrics
    assert metrics.app_streams._value.get() == 1
    assert metrics.stream_deliveries.labels("acked")._value.get() == 1


async def test_business_side_killed_mid_stream_loses_nothing_and_handles_each_once(
    stream_server: Harness, processes: list[BusinessProcess], tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(32)
    await register(stream_server, secret)
    # Handling takes longer than the gap between clicks: several are in flight at once.
    first = spawn(stream_server, secret, tmp_path, "biz", processes, "--work-s", "0.15")
    await streams_up(stream_server, 1)
    li = await stream_server.client("li")
    n = 30
    async with BusinessClient(stream_server.world.http_url, APP, secret) as oa:
        cards = [
            (await oa.push_card(approval_card(f"k{i}", ["li"]), users=["li"]))["card_id"]
            for i in range(n)
        ]

        async def clicks() -> list[str]:
            ids = []
            for card_id in cards:
                ids.append((await act(li, card_id))["action_id"])
                await asyncio.sleep(0.03)
            return ids

        clicking = asyncio.create_task(clicks())
        await until(
            lambda: (
                len(first.entries("handled")) >= 5
                and len(first.entries("received")) - len(first.entries("handled")) >= 2
            ),
            what="5 actions handled and 2 in the middle of being handled",
        )
        first.kill9()  # mid-stream: clicks keep arriving, some deliveries are unacked
        await streams_up(stream_server, 0)
        await asyncio.sleep(0.3)
        second = BusinessProcess(stream_server.world.http_url, secret, first.log)
        second.start()  # same log: the app's own record of what it handled
        processes.append(second)
        action_ids = await clicking
        await callbacks_ok(oa, [f"k{i}" for i in range(n)])
    handled = first.entries("handled")
    assert sorted(handled) == sorted(action_ids), "every decision arrives, once"
    assert len(set(handled)) == len(handled) == n
    # The kill did cut deliveries off before their ack; they were delivered again.
    assert stream_server.world.metrics.stream_deliveries.labels("closed")._value.get() >= 2
    assert len(first.entries("received")) > n


async def test_two_streams_share_the_load_and_a_killed_ones_items_go_to_the_other(
    start_server: StartServer, processes: list[BusinessProcess], tmp_path: Path
) -> None:
    # A long ack timeout: the hanging stream's items must move because it
    # dies, not because their acks time out.
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={**SETTINGS, "callback_timeout_s": 30}
    )
    secret = secrets.token_urlsafe(32)
    await register(server, secret)
    good = spawn(server, secret, tmp_path, "good", processes)
    await streams_up(server, 1)
    stuck = spawn(server, secret, tmp_path, "stuck", processes, "--hang")
    await streams_up(server, 2)
    li = await server.client("li")
    n = 10
    async with BusinessClient(server.world.http_url, APP, secret) as oa:
        cards = [
            (await oa.push_card(approval_card(f"t{i}", ["li"]), users=["li"]))["card_id"]
            for i in range(n)
        ]
        action_ids = [(await act(li, c))["action_id"] for c in cards]
        await until(
            lambda: len(good.entries("handled")) + len(stuck.entries("received")) == n,
            what="every click delivered to one of the two streams",
        )
        assert good.entries("handled") and stuck.entries("received"), "both share the load"
        held = set(stuck.entries("received"))
        stuck.kill9()
        await callbacks_ok(oa, [f"t{i}" for i in range(n)])
    assert sorted(good.entries("handled")) == sorted(action_ids)
    assert held <= set(good.entries("handled")), "the killed stream's items went to the other"
    assert not stuck.entries("handled")


async def test_without_a_stream_nothing_burns_the_attempt_budget(
    stream_server: Harness, processes: list[BusinessProcess], tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(32)
    await register(stream_server, secret)
    li = await stream_server.client("li")
    async with BusinessClient(stream_server.world.http_url, APP, secret) as oa:
        card_id = (await oa.push_card(approval_card("p1", ["li"]), users=["li"]))["card_id"]
        clicked = await act(li, card_id)
        await asyncio.sleep(2.5)  # several park rounds (0.5-1 s each)
        item = await stream_server.world.store.get_callback(card_id, clicked["action_id"])
        assert item is not None
        assert (item.state, item.attempts, item.last_error) == ("pending", 0, NO_STREAM)
        business = spawn(stream_server, secret, tmp_path, "late", processes)
        await callbacks_ok(oa, ["p1"])
    assert business.entries("handled") == [clicked["action_id"]]


async def test_the_stream_is_preferred_and_http_is_used_without_one(
    plain_server: Harness, stub: BusinessStub, processes: list[BusinessProcess], tmp_path: Path
) -> None:
    await register(plain_server, stub.secret, callback_url=stub.url)
    business = spawn(plain_server, stub.secret, tmp_path, "biz", processes)
    await streams_up(plain_server, 1)
    li = await plain_server.client("li")
    async with BusinessClient(plain_server.world.http_url, APP, stub.secret) as oa:
        first = (await oa.push_card(approval_card("h1", ["li"]), users=["li"]))["card_id"]
        over_stream = await act(li, first)
        await callbacks_ok(oa, ["h1"])
        assert stub.hits == 0 and business.entries("handled") == [over_stream["action_id"]]
        business.kill9()
        await streams_up(plain_server, 0)
        second = (await oa.push_card(approval_card("h2", ["li"]), users=["li"]))["card_id"]
        over_http = await act(li, second)
        await callbacks_ok(oa, ["h2"])
    assert [a.action_id for a in stub.actions] == [over_http["action_id"]]


# -- refusals: stable codes, nothing changes ---------------------------------------------


async def handshake(server: Harness, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A WebSocket upgrade to /api/v1/stream with ``headers``; the refusal's status and body."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{server.world.http_url}/api/v1/stream", headers={**upgrade, **headers}) as r,
    ):
        body: dict[str, Any] = await r.json()
        return r.status, body


async def test_bad_handshake_signatures_are_refused_before_the_upgrade(
    plain_server: Harness,
) -> None:
    secret = secrets.token_urlsafe(32)
    await register(plain_server, secret)
    good = sign_headers(APP, secret, b"")
    cases = {
        "bad_signature": sign_headers(APP, "x" * 40, b""),
        "signature_expired": sign_headers(APP, secret, b"", now=time.time() - 3600),
        "unknown_app": sign_headers("nobody", secret, b""),
    }
    for code, headers in cases.items():
        status, body = await handshake(plain_server, headers)
        assert (status, body["error"]["code"]) == (401, code), body
    # A handshake signed over a body other than the empty one does not verify either.
    status, body = await handshake(plain_server, sign_headers(APP, secret, b"{}"))
    assert (status, body["error"]["code"]) == (401, "bad_signature")
    # The same signed handshake twice: the second is a replay.
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{plain_server.world.http_url}/api/v1/stream", headers=good) as ws,
    ):
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello" and hello["app_id"] == APP
        status, body = await handshake(plain_server, good)
        assert (status, body["error"]["code"]) == (401, "nonce_replayed")
    assert plain_server.world.callbacks.streams.count() == 0  # only the good one, now closed
    # The SDK reports a refused handshake with the server's code.
    with pytest.raises(Exception) as refused:
        await BusinessClient(plain_server.world.http_url, APP, "y" * 40).stream(_never)
    assert getattr(refused.value, "code", None) == "bad_signature"
    # A signed GET without the upgrade: a clear 400.
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{plain_server.world.http_url}/api/v1/stream", headers=sign_headers(APP, secret, b"")
        ) as r,
    ):
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"


async def _never(_: Any) -> None:
    raise AssertionError("no callback expected")


async def test_bad_frames_get_stable_codes_and_change_nothing(plain_server: Harness) -> None:
    secret = secrets.token_urlsafe(32)
    await register(plain_server, secret)
    li = await plain_server.client("li")
    url = f"{plain_server.world.http_url}/api/v1/stream"
    async with (
        BusinessClient(plain_server.world.http_url, APP, secret) as oa,
        aiohttp.ClientSession() as s,
        s.ws_connect(url, headers=sign_headers(APP, secret, b"")) as ws,
    ):
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        card_id = (await oa.push_card(approval_card("b1", ["li"]), users=["li"]))["card_id"]
        clicked = await act(li, card_id)
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "callback" and frame["action_id"] == clicked["action_id"]
        verify_signature(secret, frame["headers"], frame["body"].encode())  # as an HTTP callback
        assert json.loads(frame["body"])["action_id"] == clicked["action_id"]

        bad: list[tuple[str | bytes, str]] = [
            ("not json", "bad_frame"),
            ("[1, 2]", "bad_frame"),
            (b"\x00\x01", "bad_frame"),
            ('{"type": "hello"}', "unknown_type"),
            ('{"type": "ack"}', "invalid_field"),
            ('{"type": "ack", "id": 7}', "invalid_field"),
            ('{"type": "ack", "id": "nope"}', "unknown_delivery"),
            ('{"type": "nack", "id": "nope", "error": "x"}', "unknown_delivery"),
            (orjson.dumps({"type": "ack", "id": frame["id"], "card_update": "x"}).decode(), ""),
            (orjson.dumps({"type": "nack", "id": frame["id"], "error": 5}).decode(), ""),
        ]
        for data, code in bad:
            await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
            error = await ws.receive_json(timeout=5)
            assert error["type"] == "error" and error["code"] == (code or "invalid_field"), error
            assert error["message"]
        # Nothing changed: the delivery is still waiting, the card's callback pending.
        item = await plain_server.world.store.get_callback(card_id, clicked["action_id"])
        assert item is not None and item.state == "pending" and item.attempts == 0
        assert (await oa.get_card("b1"))["callback"] == "pending"
        # The connection survived all of it: the real ack settles the delivery.
        await ws.send_str(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())
        await callbacks_ok(oa, ["b1"])
        # Acking it again: it is no longer waiting.
        await ws.send_str(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())
        assert (await ws.receive_json(timeout=5))["code"] == "unknown_delivery"
        # Over the size limit: the server closes with 1009 (message too big).
        await ws.send_str(" " * (64 * 1024 + 1))
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    await until(lambda: plain_server.world.callbacks.streams.count() == 0, what="stream removed")


async def test_a_nack_is_a_failed_attempt_retried_with_backoff(plain_server: Harness) -> None:
    secret = secrets.token_urlsafe(32)
    await register(plain_server, secret)
    li = await plain_server.client("li")
    url = f"{plain_server.world.http_url}/api/v1/stream"
    async with (
        BusinessClient(plain_server.world.http_url, APP, secret) as oa,
        aiohttp.ClientSession() as s,
        s.ws_connect(url, headers=sign_headers(APP, secret, b"")) as ws,
    ):
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        card_id = (await oa.push_card(approval_card("n1", ["li"]), users=["li"]))["card_id"]
        clicked = await act(li, card_id)
        first = await ws.receive_json(timeout=5)
        await ws.send_str(
            orjson.dumps({"type": "nack", "id": first["id"], "error": "busy"}).decode()
        )
        again = await ws.receive_json(timeout=5)  # redelivered: new id, new nonce, same action
        assert again["type"] == "callback" and again["action_id"] == clicked["action_id"]
        assert again["id"] != first["id"]
        assert again["headers"]["X-Imserver-Nonce"] != first["headers"]["X-Imserver-Nonce"]
        item = await plain_server.world.store.get_callback(card_id, clicked["action_id"])
        assert item is not None and (item.attempts, item.last_error) == (1, "nack: busy")
        update = {"status": {"text": "已收到", "color": "blue"}}
        await ws.send_str(
            orjson.dumps({"type": "ack", "id": again["id"], "card_update": update}).decode()
        )
        await callbacks_ok(oa, ["n1"])
        assert (await oa.get_card("n1"))["status"]["text"] == "已收到"


async def test_stream_only_registration_is_explicit_validated_and_audited(
    plain_server: Harness,
) -> None:
    secret = secrets.token_urlsafe(32)
    url = f"{plain_server.world.http_url}/admin/v1/apps"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as s:
        for wrong in ({}, {"callback_url": None}, {"callback_url": "ftp://x"}):
            body = {"app_id": APP, "secret": secret, "scope": ["*"], **wrong}
            async with s.post(url, headers=auth, json=body) as r:
                error = (await r.json())["error"]
                assert (r.status, error["code"], error["field"]) == (
                    400,
                    "invalid_field",
                    "app.callback_url",
                )
        assert await plain_server.world.store.get_app(APP) is None
        await register(plain_server, secret)
        async with s.get(f"{url}/{APP}", headers=auth) as r:
            assert (await r.json())["callback_url"] == ""
    records = await plain_server.world.store.audit.records()
    assert any(
        r.action == "admin.app_upsert" and r.target == APP and r.details["callback_url"] == ""
        for r in records
    )


async def test_a_stopping_server_closes_streams_with_1012(plain_server: Harness) -> None:
    secret = secrets.token_urlsafe(32)
    await register(plain_server, secret)
    url = f"{plain_server.world.http_url}/api/v1/stream"
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(url, headers=sign_headers(APP, secret, b"")) as ws,
    ):
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        stopping = asyncio.create_task(stop_world(plain_server.world))
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1012
        await stopping
    assert plain_server.world.metrics.app_streams._value.get() == 0


def test_the_apps_file_registers_a_stream_only_app(tmp_path: Path) -> None:
    path = tmp_path / "apps.toml"
    secret = "s" * 32
    path.write_text(f'[[app]]\napp_id = "oa"\nsecret = "{secret}"\ncallback_url = ""\n')
    [app] = load_apps_file(path)
    assert (app.app_id, app.callback_url) == ("oa", "")
    path.write_text(f'[[app]]\napp_id = "oa"\nsecret = "{secret}"\n')
    with pytest.raises(ConfigError, match="callback_url"):
        load_apps_file(path)
