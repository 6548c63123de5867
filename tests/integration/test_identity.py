"""Zero trust: issued tokens, refresh, revocation closing live sockets within 2 s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from imserver_sdk import BusinessClient, BusinessError
from tests.cards_support import ADMIN_KEY, BusinessStub
from tests.support import Harness, RawClient

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def identity_app(server: Harness, stub: BusinessStub) -> BusinessClient:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/admin/v1/apps",
            headers=AUTH,
            json={
                "app_id": "idp",
                "secret": stub.secret,
                "callback_url": stub.url,
                "scope": ["*"],
                "permissions": ["tokens"],
            },
        ) as r,
    ):
        assert r.status == 201, await r.text()
    return BusinessClient(server.world.http_url, "idp", stub.secret)


async def raw_with(server: Harness, token: str) -> tuple[RawClient, dict[str, Any]]:
    from websockets.asyncio.client import connect

    ws = await connect(server.url, subprotocols=["imserver.v1.json"], compression=None)  # type: ignore[list-item]
    raw = RawClient(ws, "json")
    return raw, await raw.request("auth", token=token)


async def refresh(server: Harness, token: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/api/v1/tokens/refresh", json={"refresh_token": token}
        ) as r,
    ):
        return r.status, await r.json()


async def revoke(server: Harness, body: dict[str, Any], token: str = ADMIN_KEY) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/admin/v1/revoke",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        return r.status


async def closed_within(raw: RawClient, seconds: float) -> int | None:
    start = time.monotonic()
    code = await raw.expect_close(timeout=seconds)
    assert time.monotonic() - start <= seconds
    return code


async def test_identity_app_issues_tokens_and_refresh_rotates(
    card_server: Harness, stub: BusinessStub
) -> None:
    await card_server.users("alice")
    idp = await identity_app(card_server, stub)
    pair = await idp.request("POST", "/api/v1/apps/tokens", {"user": "alice", "device": "phone"})
    assert pair["user"] == "alice" and pair["refresh_token"].startswith("rt_")
    assert pair["expires_at"] - time.time() * 1000 <= 900_000 + 1000  # short-lived
    raw, answer = await raw_with(card_server, pair["access_token"])
    assert answer["type"] == "result" and answer["data"]["device"] == "phone"

    status, new = await refresh(card_server, pair["refresh_token"])
    assert status == 200 and new["refresh_token"] != pair["refresh_token"]
    await raw.close()
    raw, answer = await raw_with(card_server, new["access_token"])  # same device, new token
    assert answer["type"] == "result"

    # The spent refresh token comes back: someone copied it. The device is signed out.
    status, err = await refresh(card_server, pair["refresh_token"])
    assert (status, err["error"]["code"]) == (401, "token_invalid")
    assert await closed_within(raw, 2.0) == 4012
    _, answer = await raw_with(card_server, new["access_token"])
    assert answer["type"] == "error" and answer["code"] == "token_revoked"
    status, err = await refresh(card_server, new["refresh_token"])  # revoked with the device
    assert status == 401
    status, err = await refresh(card_server, "rt_nonsense")
    assert (status, err["error"]["code"]) == (401, "token_invalid")
    await idp.close()


async def test_only_identity_apps_issue_tokens(card_server: Harness, oa: BusinessClient) -> None:
    await card_server.users("alice")
    with pytest.raises(BusinessError) as info:
        await oa.request("POST", "/api/v1/apps/tokens", {"user": "alice", "device": "d"})
    assert (info.value.status, info.value.code) == (403, "forbidden")


async def test_refresh_token_expires(start_server: Any, stub: BusinessStub) -> None:
    server: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY, "refresh_ttl_s": 1})
    await server.users("alice")
    idp = await identity_app(server, stub)
    pair = await idp.request("POST", "/api/v1/apps/tokens", {"user": "alice", "device": "d"})
    await asyncio.sleep(1.2)
    status, err = await refresh(server, pair["refresh_token"])
    assert (status, err["error"]["code"]) == (401, "token_expired")
    await idp.close()


async def test_admin_revokes_a_device_within_two_seconds(card_server: Harness) -> None:
    phone = await card_server.raw("alice", "phone")
    pc = await card_server.raw("alice", "pc")
    old_phone_token = card_server.token("alice", "phone")
    assert await revoke(card_server, {"user": "alice", "device": "phone"}) == 200
    assert await closed_within(phone, 2.0) == 4012
    assert (await pc.request("ping"))["type"] == "pong"  # the other device stays
    _, answer = await raw_with(card_server, old_phone_token)
    assert answer["code"] == "token_revoked"
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{card_server.world.http_url}/api/v1/todo",
            headers={"Authorization": f"Bearer {old_phone_token}"},
        ) as r,
    ):
        assert r.status == 401 and (await r.json())["error"]["code"] == "token_revoked"
    await asyncio.sleep(0.01)
    _, answer = await raw_with(card_server, card_server.token("alice", "phone"))
    assert answer["type"] == "result"  # a token issued after the revocation works
    records = await card_server.world.store.audit.records()
    assert any(r.action == "identity.revoke" and r.target == "alice" for r in records)


async def test_revoking_a_user_closes_every_device(card_server: Harness) -> None:
    devices = [await card_server.raw("bob", d) for d in ("a", "b", "c")]
    assert await revoke(card_server, {"user": "bob"}) == 200
    codes = await asyncio.gather(*(closed_within(d, 2.0) for d in devices))
    assert codes == [4012, 4012, 4012]


async def test_scoped_admin_revokes_only_inside_their_subtree(card_server: Harness) -> None:
    tree = (
        '{"op":"unit","id":"jx","name":"jx","level":"province"}\n'
        '{"op":"unit","id":"a","name":"a","level":"city","parent":"jx"}\n'
        '{"op":"unit","id":"b","name":"b","level":"city","parent":"jx"}\n'
        '{"op":"member","user":"boss-a","name":"x","units":[{"unit":"a"}]}\n'
        '{"op":"member","user":"in-a","name":"x","units":[{"unit":"a"}]}\n'
        '{"op":"member","user":"in-b","name":"x","units":[{"unit":"b"}]}\n'
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{card_server.world.http_url}/admin/v1/directory/sync?mode=full",
            data=tree.encode(),
            headers=AUTH,
        ) as r:
            assert r.status == 200
        async with s.post(
            f"{card_server.world.http_url}/admin/v1/admins",
            json={"user": "boss-a", "unit": "a"},
            headers=AUTH,
        ) as r:
            assert r.status == 201
    boss = card_server.token("boss-a")
    assert await revoke(card_server, {"user": "in-a"}, boss) == 200
    assert await revoke(card_server, {"user": "in-b"}, boss) == 404
    assert await revoke(card_server, {"user": "in-b"}, "garbage") == 401
