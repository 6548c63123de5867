"""Per-user and per-app rate limits: a clear error with a retry hint, then recovery."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imserver_sdk import BusinessClient, BusinessError
from tests.cards_support import ADMIN_KEY, BusinessStub, business
from tests.support import Harness


async def test_user_requests_over_the_limit_get_rate_limited_then_recover(
    start_server: Any,
) -> None:
    server: Harness = await start_server(limits={"user_requests_per_s": 5.0, "user_burst": 5})
    phone = await server.raw("alice", "phone")
    pc = await server.raw("alice", "pc")  # the limit is per user, over all devices
    answers = [await phone.request("unread") for _ in range(3)]
    answers += [await pc.request("unread") for _ in range(3)]
    assert [a["type"] for a in answers[:5]] == ["result"] * 5
    limited = answers[5]
    assert limited["type"] == "error" and limited["code"] == "rate_limited"
    assert 0 < limited["details"]["retry_after_ms"] <= 250
    assert (await pc.request("ping"))["type"] == "error"  # still limited, connection open
    await asyncio.sleep(0.5)
    assert (await pc.request("ping"))["type"] == "pong"
    other = await server.raw("bob")  # other users are unaffected
    assert (await other.request("unread"))["type"] == "result"


async def test_app_requests_over_the_limit_get_429_with_retry_after(
    start_server: Any, stub: BusinessStub
) -> None:
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={"app_requests_per_s": 2.0, "app_burst": 2}
    )
    await server.users("li")
    oa: BusinessClient = await business(server, stub)
    for i in range(2):
        await oa.send_notice(f"通知{i}", "内容", users=["li"])
    with pytest.raises(BusinessError) as info:
        await oa.send_notice("通知3", "内容", users=["li"])
    assert (info.value.status, info.value.code) == (429, "rate_limited")
    await asyncio.sleep(0.6)
    assert (await oa.send_notice("通知4", "内容", users=["li"]))["recipients"] == 1
    await oa.close()
