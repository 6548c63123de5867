"""Authentication and connection set-up (docs/protocol.md sections 1, 3 and 7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import msgpack
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from imserver.tokens import load_or_create_secret
from tests.support import Harness, RawClient

StartServer = Callable[..., Awaitable[Harness]]

CODECS = ["json", "msgpack"]


async def open_raw(h: Harness, codec: str = "json") -> RawClient:
    """An unauthenticated raw connection (closed by the harness at the end)."""
    return await h.raw(None, codec=codec)


async def auth_refused(raw: RawClient, token: Any, code: str, close: int) -> dict[str, Any]:
    """Send auth with ``token``; expect error ``code`` (id echoed) then close ``close``."""
    await raw.send({"type": "auth", "id": "a-1", "token": token})
    answer = await raw.recv()
    assert answer["type"] == "error", answer
    assert answer["code"] == code, answer
    assert answer["id"] == "a-1"
    assert await raw.expect_close() == close
    return answer


def claims(
    user: str = "alice", device: str = "d1", ttl: int = 3600, **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "sub": user,
        "dev": device,
        "typ": "user",
        "iat": now,
        "exp": now + ttl,
        "jti": "t1",
    }
    out.update(extra)
    return out


def secret_of(h: Harness) -> str:
    """The server's signing secret (generated into the data dir)."""
    return load_or_create_secret(h.world.config.auth.secret, h.world.config.data_path)


# --------------------------------------------------------------------------- timeouts


async def test_no_auth_within_timeout_closes_4001(start_server: StartServer) -> None:
    h = await start_server(auth={"auth_timeout_s": 0.5})
    raw = await open_raw(h)
    started = time.monotonic()
    assert await raw.expect_close(timeout=5.0) == 4001
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3.0, elapsed


async def test_auth_just_in_time_is_accepted(start_server: StartServer) -> None:
    h = await start_server(auth={"auth_timeout_s": 0.5})
    await h.users("alice")
    raw = await open_raw(h)
    await asyncio.sleep(0.2)
    answer = await raw.request("auth", token=h.token("alice"))
    assert answer["type"] == "result", answer
    await asyncio.sleep(0.6)  # past auth_timeout_s: an authenticated socket stays open
    assert (await raw.request("ping"))["type"] == "pong"


# --------------------------------------------------------------------------- bad tokens


@pytest.mark.parametrize("codec", CODECS)
async def test_forged_token_is_token_invalid_then_4002(server: Harness, codec: str) -> None:
    await server.users("alice")
    forged = jwt.encode(claims(), "another-secret-that-is-long-enough-0123456789", "HS256")
    raw = await open_raw(server, codec)
    await auth_refused(raw, forged, "token_invalid", 4002)


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.AAAA", "Bearer x", "x" * 4000]
)
async def test_garbage_token_is_token_invalid_then_4002(server: Harness, token: str) -> None:
    await server.users("alice")
    raw = await open_raw(server)
    await auth_refused(raw, token, "token_invalid", 4002)


async def test_alg_none_token_is_token_invalid(server: Harness) -> None:
    await server.users("alice")
    unsigned = jwt.encode(claims(), None, algorithm="none")
    raw = await open_raw(server)
    await auth_refused(raw, unsigned, "token_invalid", 4002)


@pytest.mark.parametrize(
    "bad_claims",
    [
        {"typ": "refresh"},  # wrongly typed token
        {"dev": "bad device!"},
        {"sub": ""},
    ],
)
async def test_token_with_bad_claims_is_token_invalid(
    server: Harness, bad_claims: dict[str, Any]
) -> None:
    await server.users("alice")
    token = jwt.encode(claims(**bad_claims), secret_of(server), "HS256")
    raw = await open_raw(server)
    await auth_refused(raw, token, "token_invalid", 4002)


async def test_token_missing_device_claim_is_token_invalid(server: Harness) -> None:
    await server.users("alice")
    c = claims()
    del c["dev"]
    token = jwt.encode(c, secret_of(server), "HS256")
    raw = await open_raw(server)
    await auth_refused(raw, token, "token_invalid", 4002)


@pytest.mark.parametrize("codec", CODECS)
async def test_expired_token_is_token_expired_then_4002(server: Harness, codec: str) -> None:
    await server.users("alice")
    expired = server.world.signer.mint("alice", "d1", ttl_s=-100)
    raw = await open_raw(server, codec)
    await auth_refused(raw, expired, "token_expired", 4002)


async def test_token_for_unknown_user_is_token_invalid(server: Harness) -> None:
    token = server.world.signer.mint("ghost", "d1", 3600)  # ghost is not in the store
    raw = await open_raw(server)
    await auth_refused(raw, token, "token_invalid", 4002)
    assert not server.world.hub.is_online("ghost")


async def test_failed_auth_leaves_user_offline(server: Harness) -> None:
    bob = await server.raw("bob")
    await server.users("alice")
    raw = await open_raw(server)
    await auth_refused(raw, server.world.signer.mint("alice", "d1", -100), "token_expired", 4002)
    answer = await bob.request("presence.query", users=["alice"])
    assert answer["data"] == {"online": {"alice": False}}


# --------------------------------------------------------------------------- auth first


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ping", "id": 7},
        {"type": "sync", "id": 7, "since": {}},
        {
            "type": "send",
            "id": 7,
            "to": "bob",
            "client_msg_id": "c",
            "kind": "text",
            "body": {"text": "sneaky"},
        },
        {"type": "nonsense", "id": 7},
    ],
)
async def test_first_frame_not_auth_is_not_authenticated_then_4003(
    server: Harness, codec: str, frame: dict[str, Any]
) -> None:
    await server.users("alice", "bob")
    raw = await open_raw(server, codec)
    await raw.send(frame)
    answer = await raw.recv()
    assert answer["type"] == "error", answer
    if frame["type"] == "nonsense":
        assert answer["code"] in ("not_authenticated", "unknown_type"), answer
    else:
        assert answer["code"] == "not_authenticated", answer
    assert answer["id"] == 7
    assert await raw.expect_close() == 4003
    assert await server.world.store.get_conversation("dm:alice:bob") is None


@pytest.mark.parametrize("codec", CODECS)
async def test_bad_frame_before_auth_closes_4003(server: Harness, codec: str) -> None:
    raw = await open_raw(server, codec)
    await raw.send_raw(b"\xc1\xff" if codec == "msgpack" else "{nope")
    answer = await raw.recv()
    assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
    assert answer["id"] is None
    assert await raw.expect_close() == 4003


async def test_non_object_frame_before_auth_closes_4003(server: Harness) -> None:
    raw = await open_raw(server)
    await raw.send_raw("[1, 2, 3]")
    answer = await raw.recv()
    assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
    assert await raw.expect_close() == 4003


async def test_auth_without_token_closes(server: Harness) -> None:
    raw = await open_raw(server)
    await raw.send({"type": "auth", "id": 1})
    answer = await raw.recv()
    assert answer["type"] == "error", answer
    assert answer["code"] == "invalid_field" and answer["field"] == "token", answer
    assert await raw.expect_close() == 4003


# --------------------------------------------------------------------------- devices


async def test_same_device_twice_replaces_older_with_4010(server: Harness) -> None:
    await server.users("alice", "bob")
    bob = await server.raw("bob")
    watch = await bob.request("presence.subscribe", users=["alice"])
    assert watch["data"] == {"online": {"alice": False}}
    old = await server.raw("alice", device="phone")
    new = await server.raw("alice", device="phone")
    assert await old.expect_close() == 4010
    assert (await new.request("ping"))["type"] == "pong"
    await asyncio.sleep(0.2)  # let the server finish with the old socket
    # alice never looked offline to her watchers: one "online" event, no "offline".
    assert (await bob.request("ping"))["type"] == "pong"
    presence = [f["data"] for f in bob.backlog if f.get("event") == "presence"]
    assert presence == [{"user": "alice", "online": True}]
    # The newer connection is the one that gets messages.
    sent = await bob.request(
        "send", to="alice", client_msg_id="m1", kind="text", body={"text": "hello"}
    )
    assert sent["type"] == "result", sent
    ev = await new.recv_until(lambda f: f.get("event") == "message")
    assert ev["data"]["body"] == {"text": "hello"}
    assert server.world.hub.is_online("alice")
    assert server.world.hub.connection_count() == 2  # alice/phone (new) and bob


async def test_replaced_connection_cannot_send(server: Harness) -> None:
    await server.users("alice", "bob")
    old = await server.raw("alice", device="phone")
    await server.raw("alice", device="phone")
    assert await old.expect_close() == 4010
    with pytest.raises(ConnectionClosed):
        await old.send(
            {
                "type": "send",
                "id": 1,
                "to": "bob",
                "client_msg_id": "late",
                "kind": "text",
                "body": {"text": "late"},
            }
        )
        await old.recv(timeout=1.0)
    assert await server.world.store.get_conversation("dm:alice:bob") is None


async def test_two_devices_both_stay_and_both_receive(server: Harness) -> None:
    await server.users("alice", "bob")
    phone = await server.raw("alice", device="phone")
    pc = await server.raw("alice", device="pc", codec="msgpack")
    bob = await server.raw("bob")
    sent = await bob.request(
        "send", to="alice", client_msg_id="m1", kind="text", body={"text": "to both"}
    )
    assert sent["type"] == "result", sent
    for dev in (phone, pc):
        ev = await dev.recv_until(lambda f: f.get("event") == "message")
        assert ev["data"]["conv"] == "dm:alice:bob"
        assert ev["data"]["seq"] == sent["data"]["seq"]
        assert ev["data"]["body"] == {"text": "to both"}
        assert (await dev.request("ping"))["type"] == "pong"
    # A message from one device reaches the other device too, tagged with its device.
    own = await phone.request(
        "send", to="bob", client_msg_id="m2", kind="text", body={"text": "from phone"}
    )
    assert own["type"] == "result", own
    ev = await pc.recv_until(lambda f: f.get("event") == "message")
    assert ev["data"]["device"] == "phone" and ev["data"]["sender"] == "alice"


# --------------------------------------------------------------------------- result


@pytest.mark.parametrize("codec", CODECS)
async def test_auth_result_carries_user_device_and_limits(
    start_server: StartServer, codec: str
) -> None:
    h = await start_server(
        limits={"max_text_chars": 321, "max_frame_bytes": 4096, "history_page_max": 7},
        chat={"recall_window_s": 30},
    )
    await h.users("alice")
    raw = await open_raw(h, codec)
    before = int(time.time() * 1000)
    token = h.world.signer.mint("alice", "tablet-2", 600)
    answer = await raw.request("auth", token=token)
    after = int(time.time() * 1000)
    assert answer["type"] == "result", answer
    assert answer["id"] == 1
    data = answer["data"]
    assert data["user"] == "alice"
    assert data["device"] == "tablet-2"
    assert before - 1000 <= data["server_time"] <= after + 1000
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert data["expires_at"] == exp * 1000
    cfg = h.world.config
    assert data["limits"] == {
        "max_frame_bytes": 4096,
        "max_text_chars": 321,
        "max_group_members": cfg.limits.max_group_members,
        "max_file_bytes": cfg.limits.max_file_bytes,
        "recall_window_s": 30,
        "idle_timeout_s": int(cfg.gateway.idle_timeout_s),
        "sync_page_messages": cfg.limits.sync_page_messages,
        "sync_page_conversations": cfg.limits.sync_page_conversations,
        "history_page_max": 7,
        "requests_per_s": cfg.limits.user_requests_per_s,
        "request_burst": cfg.limits.user_burst,
        "refusals_before_close": max(100, 2 * cfg.limits.user_burst),
        "token_leeway_s": 5,
    }
    assert h.world.hub.is_online("alice")


# --------------------------------------------------------------------------- subprotocols


async def test_msgpack_subprotocol_gives_binary_frames(server: Harness) -> None:
    await server.users("alice")
    async with connect(server.url, subprotocols=[Subprotocol("imserver.v1.msgpack")]) as ws:
        assert ws.subprotocol == "imserver.v1.msgpack"
        await ws.send(msgpack.packb({"type": "auth", "id": 1, "token": server.token("alice")}))
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, bytes)
        frame = msgpack.unpackb(raw, raw=False)
        assert frame["type"] == "result" and frame["data"]["user"] == "alice"
        await ws.send(msgpack.packb({"type": "ping", "id": 2}))
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, bytes)
        assert msgpack.unpackb(raw, raw=False) == {"type": "pong", "id": 2}


async def test_json_subprotocol_gives_text_frames(server: Harness) -> None:
    await server.users("alice")
    async with connect(server.url, subprotocols=[Subprotocol("imserver.v1.json")]) as ws:
        assert ws.subprotocol == "imserver.v1.json"
        await ws.send(
            orjson.dumps({"type": "auth", "id": 1, "token": server.token("alice")}).decode()
        )
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, str)
        assert orjson.loads(raw)["data"]["user"] == "alice"


async def test_no_subprotocol_means_json(server: Harness) -> None:
    await server.users("alice")
    async with connect(server.url) as ws:
        assert ws.subprotocol is None
        await ws.send(
            orjson.dumps({"type": "auth", "id": 1, "token": server.token("alice")}).decode()
        )
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, str)
        frame = orjson.loads(raw)
        assert frame["type"] == "result" and frame["data"]["user"] == "alice"
        await ws.send('{"type": "ping", "id": "p"}')
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, str) and orjson.loads(raw) == {"type": "pong", "id": "p"}


async def test_first_supported_offer_is_chosen(server: Harness) -> None:
    offers = [
        Subprotocol(p) for p in ("imserver.v2.cbor", "imserver.v1.msgpack", "imserver.v1.json")
    ]
    async with connect(server.url, subprotocols=offers) as ws:
        assert ws.subprotocol == "imserver.v1.msgpack"


@pytest.mark.parametrize("offers", [["imserver.v2.cbor"], ["chat", "superchat"]])
async def test_unsupported_subprotocol_only_is_rejected(server: Harness, offers: list[str]) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, subprotocols=[Subprotocol(p) for p in offers]):
            pass
    assert info.value.response.status_code == 400
