"""Rate limits cannot be bypassed (issue #12, item 7).

Every frame costs budget before it is parsed (malformed, unknown, oversized,
``ping``); a client that keeps flooding while refused is closed with 4014; the
HTTP user routes draw on the same per-user budget; and the SDK paces itself
and retries ``rate_limited`` so a burst of 200 sends all get stored once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from websockets.exceptions import ConnectionClosed

from imserver_sdk import Ack
from tests.support import Harness

CLOSE_RATE_FLOOD = 4014


def _rate_limited_count(server: Harness) -> float:
    value = server.world.metrics.registry.get_sample_value(
        "imserver_request_errors_total", {"code": "rate_limited"}
    )
    return value or 0.0


async def test_a_flood_of_malformed_frames_is_rate_limited_then_closed(
    start_server: Any,
) -> None:
    server: Harness = await start_server(limits={"user_requests_per_s": 20.0, "user_burst": 60})
    raw = await server.raw("alice")
    sent = 0
    try:
        for _ in range(5000):
            await raw.send_raw("{not json")
            sent += 1
    except ConnectionClosed:
        pass  # closed for flooding while we were still sending
    codes: list[str] = []
    try:
        while True:
            frame = await raw.recv(timeout=5)
            codes.append(frame.get("code", ""))
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == CLOSE_RATE_FLOOD
    # The burst (plus what refilled meanwhile) was parsed and answered bad_frame;
    # then refusals, bounded: never 5,000 parsed frames.
    assert codes.count("bad_frame") >= 60
    assert codes.count("bad_frame") < 1000
    # Closed after refusals_before_close (2 x burst = 120) refusals in a row.
    assert codes[-120:] == ["rate_limited"] * 120, (codes[-130:], sent)
    assert set(codes) == {"bad_frame", "rate_limited"}


async def test_every_kind_of_frame_costs_budget_and_keeps_its_id(start_server: Any) -> None:
    server: Harness = await start_server(
        limits={"user_requests_per_s": 0.2, "user_burst": 4, "max_frame_bytes": 1024}
    )
    raw = await server.raw("alice")
    assert (await raw.request("ping"))["type"] == "pong"
    await raw.send_raw("][")
    assert (await raw.recv())["code"] == "bad_frame"
    assert (await raw.request("no.such.request"))["code"] == "unknown_type"
    await raw.send({"type": "ping", "id": 99, "pad": "x" * 2000})
    assert (await raw.recv())["code"] == "frame_too_large"
    # Four frames of four kinds spent the burst of 4: the next ping is refused.
    limited = await raw.request("ping")
    assert limited["type"] == "error" and limited["code"] == "rate_limited"
    assert limited["id"] == 4  # (auth was 1) the client can tell which request to retry
    assert limited["details"]["retry_after_ms"] > 0
    # The budget is the user's: another device of alice is refused too.
    phone = await server.raw("alice", "phone")
    assert (await phone.request("unread"))["code"] == "rate_limited"


async def test_the_auth_result_announces_the_budget(start_server: Any) -> None:
    server: Harness = await start_server(limits={"user_requests_per_s": 7.5, "user_burst": 33})
    alice = await server.client("alice")
    assert alice.limits["requests_per_s"] == 7.5
    assert alice.limits["request_burst"] == 33
    assert alice.limits["refusals_before_close"] == 100


async def test_http_user_routes_share_the_users_budget(start_server: Any) -> None:
    server: Harness = await start_server(limits={"user_requests_per_s": 0.2, "user_burst": 3})
    await server.users("alice", "bob")
    headers = {"Authorization": f"Bearer {server.token('alice', 'web')}"}
    todo_url = f"{server.world.http_url}/api/v1/todo"
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(todo_url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(todo_url, headers=headers) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            error = (await resp.json())["error"]
        assert error["code"] == "rate_limited"
        assert error["details"]["retry_after_ms"] > 0
        for method, path in (
            ("POST", "/api/v1/files?name=a.txt"),
            ("GET", "/api/v1/files/" + "0" * 64),
            ("POST", "/api/v1/cards/c1/act"),
        ):
            async with http.request(
                method, server.world.http_url + path, headers=headers, data=b"{}"
            ) as resp:
                assert resp.status == 429, (path, await resp.text())
        # Bob's budget is his own.
        bob = {"Authorization": f"Bearer {server.token('bob', 'web')}"}
        async with http.get(todo_url, headers=bob) as resp:
            assert resp.status == 200
    # ... and alice's sockets draw on the same, spent, budget.
    raw = await server.raw("alice")
    assert (await raw.request("unread"))["code"] == "rate_limited"


async def test_sdk_resends_200_messages_under_a_tight_limit_each_stored_once(
    start_server: Any,
) -> None:
    server: Harness = await start_server(limits={"user_requests_per_s": 60.0, "user_burst": 10})
    await server.users("bob")
    pc = await server.client("alice", "pc")
    phone = await server.client("alice", "phone")  # spends the same budget at the same time
    refused_before = _rate_limited_count(server)
    pc_sends = [asyncio.create_task(pc.send_text(f"pc {i}", to="bob")) for i in range(200)]
    phone_sends = [asyncio.create_task(phone.send_text(f"ph {i}", to="bob")) for i in range(40)]
    await asyncio.sleep(0.05)
    for sock in server.world.hub.sockets():  # pc's connection drops mid-burst
        if (sock.user, sock.device) == ("alice", "pc"):
            sock.close(1012, "server restarting")
    started = time.monotonic()
    acks: list[Ack] = await asyncio.gather(*pc_sends, *phone_sends)
    assert pc.reconnects >= 1
    assert _rate_limited_count(server) > refused_before  # the SDK was refused, and retried
    assert time.monotonic() - started < 60
    conv = acks[0].conv
    assert len({a.client_msg_id for a in acks}) == 240
    assert len({a.seq for a in acks}) == 240  # resends got the original seq back
    stored = await server.world.store.messages_after(conv, 0, 1000)
    texts = sorted(m.body["text"] for m in stored)
    assert texts == sorted([f"pc {i}" for i in range(200)] + [f"ph {i}" for i in range(40)])
