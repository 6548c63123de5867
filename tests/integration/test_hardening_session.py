"""A session lives no longer than its token (issue #12, item 6).

The server warns with ``auth.expiring``, extends the session on a fresh
``auth`` for the same user and device, and closes with 4013 at
``expires_at + leeway`` otherwise; a request arriving after that is not
answered. Tokens here live a few seconds, so each test takes about
``ttl + LEEWAY_S`` seconds of real time: the timers are real.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from imserver.tokens import LEEWAY_S
from imserver_sdk import Client, ClientClosed
from tests.support import Harness, RawClient

CLOSE_TOKEN_EXPIRED = 4013


def _exp(token: str) -> int:
    exp: int = jwt.decode(token, options={"verify_signature": False})["exp"]
    return exp


async def _authed_raw(server: Harness, token: str) -> RawClient:
    raw = await server.raw()
    answer = await raw.request("auth", token=token)
    assert answer["type"] == "result", answer
    return raw


def _is_expiring(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "event" and frame.get("event") == "auth.expiring"


async def test_expiring_token_is_warned_then_closed_with_4013(server: Harness) -> None:
    await server.users("alice")
    token = server.token("alice", "d1", ttl=4)
    exp = _exp(token)
    raw = await _authed_raw(server, token)
    warning = await raw.recv_until(_is_expiring, timeout=6)
    assert warning["data"] == {"expires_at": exp * 1000}
    # Warned a quarter of the 4 s lifetime (1 s) ahead of exp; the session
    # still answers until exp + leeway.
    assert time.time() < exp + 0.5
    assert (await raw.request("ping"))["type"] == "pong"
    assert await raw.expect_close(timeout=LEEWAY_S + 6) == CLOSE_TOKEN_EXPIRED
    assert time.time() >= exp + LEEWAY_S - 0.1  # not before the documented leeway


async def test_reauth_on_the_open_socket_extends_the_session(server: Harness) -> None:
    await server.users("alice")
    short = server.token("alice", "d1", ttl=3)
    raw = await _authed_raw(server, short)
    await raw.recv_until(_is_expiring, timeout=5)
    fresh = server.token("alice", "d1", ttl=3600)
    answer = await raw.request("auth", token=fresh)
    assert answer["type"] == "result", answer
    assert answer["data"]["expires_at"] == _exp(fresh) * 1000
    assert (answer["data"]["user"], answer["data"]["device"]) == ("alice", "d1")
    # Past the old token's expiry and leeway the session still answers.
    await asyncio.sleep(max(0.0, _exp(short) + LEEWAY_S + 1 - time.time()))
    assert (await raw.request("unread"))["type"] == "result"
    assert server.world.hub.is_online("alice")


async def test_reauth_with_a_wrong_token_is_refused_and_keeps_the_old_expiry(
    server: Harness,
) -> None:
    await server.users("alice", "bob")
    minted_before_revocation = server.token("alice", "d1", ttl=3600)
    short = server.token("alice", "d1", ttl=3)
    raw = await _authed_raw(server, short)
    refusals = {
        "another user": (server.token("bob", "d1"), "already_authenticated"),
        "another device": (server.token("alice", "d2"), "already_authenticated"),
        "expired": (server.token("alice", "d1", ttl=-60), "token_expired"),
        "forged": (short[:-4] + "AAAA", "token_invalid"),
    }
    for what, (token, code) in refusals.items():
        answer = await raw.request("auth", token=token)
        assert (answer["type"], answer.get("code")) == ("error", code), what
    # A revocation recorded after a token was minted makes that token useless.
    await server.world.store.revoke("alice", "d1", int(time.time() * 1000) + 1)
    answer = await raw.request("auth", token=minted_before_revocation)
    assert (answer["type"], answer.get("code")) == ("error", "token_revoked")
    # None of them extended the session: it ends with the short token.
    assert await raw.expect_close(timeout=LEEWAY_S + 6) == CLOSE_TOKEN_EXPIRED
    assert time.time() >= _exp(short) + LEEWAY_S - 0.1


async def test_a_request_arriving_after_expiry_is_not_answered(server: Harness) -> None:
    await server.users("alice")
    token = server.token("alice", "d1", ttl=1)
    raw = await _authed_raw(server, token)
    await raw.send({"type": "sync", "id": 77, "since": {}})
    # Hold the (shared, in-process) event loop until the token is past its
    # leeway, so the sync reaches the server only after the session expired.
    time.sleep(max(0.0, _exp(token) + LEEWAY_S + 0.5 - time.time()))  # noqa: ASYNC251 - on purpose
    frames: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frames.append(await raw.recv(timeout=5))
    assert not [f for f in frames if f.get("id") == 77], frames
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOKEN_EXPIRED


async def test_sdk_with_a_token_provider_reauthenticates_in_place(server: Harness) -> None:
    await server.users("alice")
    issued: list[str] = []

    async def provider() -> str:
        token = server.token("alice", "d1", ttl=3 if not issued else 3600)
        issued.append(token)
        return token

    client = Client(server.url, provider, backoff_initial=0.05)
    await client.connect()
    try:
        await client.next_event("auth.expiring", timeout=5)
        await asyncio.sleep(max(0.0, _exp(issued[0]) + LEEWAY_S + 1 - time.time()))
        assert client.connected and client.reconnects == 0
        assert len(issued) == 2
        assert client.auth_info["expires_at"] == _exp(issued[1]) * 1000
        assert (await client.unread())["total"] == 0
    finally:
        await client.close()


async def test_sdk_with_a_fixed_token_stops_with_4013_at_expiry(server: Harness) -> None:
    await server.users("alice")
    client = Client(server.url, server.token("alice", "d1", ttl=2), backoff_initial=0.05)
    await client.connect()
    try:
        assert await client.wait_closed(timeout=LEEWAY_S + 6) == CLOSE_TOKEN_EXPIRED
        assert client.reconnects == 0  # reconnecting with the same token is pointless
        with pytest.raises(ClientClosed) as info:
            await client.unread()
        assert info.value.code == CLOSE_TOKEN_EXPIRED
    finally:
        await client.close()
