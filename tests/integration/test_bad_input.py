"""Bad input on a live, authenticated connection (docs/protocol.md sections 2, 4, 6, 7).

Every bad frame must get exactly one error answer with the documented code,
leave the connection open (except the 1009 hard limit) and change nothing:
no message stored, no conversation created, nothing delivered to anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import string
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cards.requests import CARD_REQUEST_TYPES
from imserver.protocol import requests as rq
from tests.support import Harness, RawClient

#: Every type the server answers: the core's and the cards plug-in's.
REQUEST_TYPES = rq.REQUEST_TYPES + CARD_REQUEST_TYPES

StartServer = Callable[..., Awaitable[Harness]]

CODECS = ["json", "msgpack"]


# --------------------------------------------------------------------------- helpers


@dataclass
class Ctx:
    h: Harness
    codec: str
    alice: RawClient  # the sender of bad input; plain member of `group`
    bob: RawClient  # the victim: owner of `group` and `private`
    group: str  # owner bob; members alice, carol
    private: str  # owner bob; member carol (alice is not in it)
    dm: str  # dm:alice:bob, one message
    dm_bc: str  # dm:bob:carol, one message
    convs: tuple[str, ...]


async def count_messages(h: Harness) -> int:
    """Total messages in the database, read on a connection of the test's own."""
    ((n,),) = await h.read_rows("SELECT count(*) FROM messages")
    return int(n)


async def count_conversations(h: Harness) -> int:
    ((n,),) = await h.read_rows("SELECT count(*) FROM conversations")
    return int(n)


async def snapshot(ctx: Ctx) -> dict[str, Any]:
    store = ctx.h.world.store
    out: dict[str, Any] = {}
    for conv in ctx.convs:
        c = await store.get_conversation(conv)
        assert c is not None
        msgs = await store.messages_after(conv, 0, 10_000)
        out[conv] = (c.last_seq, [(m.seq, m.kind, m.body, m.recalled) for m in msgs])
    out["total_messages"] = await count_messages(ctx.h)
    out["total_conversations"] = await count_conversations(ctx.h)
    return out


async def assert_victim_sees_nothing(ctx: Ctx, before: dict[str, Any]) -> None:
    """Bob syncs from what he held before: nothing new, and no event reached him."""
    since = {conv: before[conv][0] for conv in ctx.convs}
    rid = "victim-sync-" + uuid.uuid4().hex
    await ctx.bob.send({"type": "sync", "id": rid, "since": since})
    events: list[dict[str, Any]] = []
    while True:
        frame = await ctx.bob.recv()
        if frame.get("type") == "event":
            events.append(frame)
            continue
        assert frame.get("id") == rid, frame
        break
    assert frame["type"] == "result", frame
    assert frame["data"]["conversations"] == [], frame
    assert [e for e in events if e.get("event") == "message"] == []
    ctx.bob.backlog.clear()


async def drain_wire(raw: RawClient) -> None:
    """Read and drop everything already sent to ``raw``."""
    raw.backlog.clear()
    with contextlib.suppress(TimeoutError):
        while True:
            await raw.recv(timeout=0.2)


async def assert_still_open(raw: RawClient) -> None:
    answer = await raw.request("ping")
    assert answer["type"] == "pong", answer


async def make_ctx(h: Harness, codec: str) -> Ctx:
    await h.users("alice", "bob", "carol", "dave")
    bob = await h.raw("bob", device="victim", codec=codec)
    alice = await h.raw("alice", codec=codec)
    g = await bob.request("group.create", name="team", members=["alice", "carol"])
    assert g["type"] == "result", g
    p = await bob.request("group.create", name="private", members=["carol"])
    assert p["type"] == "result", p
    s1 = await bob.request(
        "send", to="alice", client_msg_id="seed-1", kind="text", body={"text": "hi alice"}
    )
    assert s1["type"] == "result", s1
    s2 = await bob.request(
        "send", to="carol", client_msg_id="seed-2", kind="text", body={"text": "hi carol"}
    )
    assert s2["type"] == "result", s2
    group, private = g["data"]["conv"], p["data"]["conv"]
    ctx = Ctx(
        h=h,
        codec=codec,
        alice=alice,
        bob=bob,
        group=group,
        private=private,
        dm="dm:alice:bob",
        dm_bc="dm:bob:carol",
        convs=(group, private, "dm:alice:bob", "dm:bob:carol"),
    )
    # Drain the seed events so later checks see only what bad input causes.
    await assert_still_open(alice)
    await assert_still_open(bob)
    alice.backlog.clear()
    bob.backlog.clear()
    return ctx


@pytest.fixture(params=CODECS)
async def ctx(request: pytest.FixtureRequest, server: Harness) -> Ctx:
    return await make_ctx(server, request.param)


async def raw_answer(raw: RawClient, data: bytes | str) -> dict[str, Any]:
    """Send raw bytes; return the next non-event frame."""
    await raw.send_raw(data)
    return await raw.recv_until(lambda f: f.get("type") != "event")


def encode_any(codec: str, obj: Any) -> bytes | str:
    if codec == "msgpack":
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    return orjson.dumps(obj).decode()


async def check_unchanged(ctx: Ctx, before: dict[str, Any]) -> None:
    await assert_still_open(ctx.alice)
    assert await snapshot(ctx) == before
    await assert_victim_sees_nothing(ctx, before)


# --------------------------------------------------------------------------- frames


async def test_invalid_bytes_is_bad_frame(ctx: Ctx) -> None:
    before = await snapshot(ctx)
    garbage: bytes | str = b"\xc1\xc1\xc1" if ctx.codec == "msgpack" else '{"type": "ping", "id":'
    answer = await raw_answer(ctx.alice, garbage)
    assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
    assert answer["id"] is None
    await check_unchanged(ctx, before)


async def test_truncated_msgpack_or_binary_json_is_bad_frame(ctx: Ctx) -> None:
    before = await snapshot(ctx)
    if ctx.codec == "msgpack":
        whole: bytes = msgpack.packb({"type": "ping", "id": 1})
        data: bytes | str = whole[:-1]  # truncated map
    else:
        data = b"\xff\xfe not utf-8 json"
    answer = await raw_answer(ctx.alice, data)
    assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
    assert answer["id"] is None
    await check_unchanged(ctx, before)


@pytest.mark.parametrize("value", [[1, 2], 42, "ping", None, [{"type": "ping", "id": 1}]])
async def test_non_object_frame_is_bad_frame(ctx: Ctx, value: Any) -> None:
    before = await snapshot(ctx)
    answer = await raw_answer(ctx.alice, encode_any(ctx.codec, value))
    assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
    assert answer["id"] is None
    await check_unchanged(ctx, before)


async def test_msgpack_map_with_non_string_key_is_bad_frame(server: Harness) -> None:
    ctx = await make_ctx(server, "msgpack")  # JSON object keys are always strings
    before = await snapshot(ctx)
    answer = await raw_answer(ctx.alice, msgpack.packb({b"type": "ping", b"id": 1}))
    assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
    assert answer["id"] is None
    await check_unchanged(ctx, before)


async def test_wrong_websocket_frame_kind(ctx: Ctx) -> None:
    """A text frame on a msgpack connection is bad_frame; JSON accepts binary UTF-8."""
    before = await snapshot(ctx)
    if ctx.codec == "msgpack":
        answer = await raw_answer(ctx.alice, '{"type": "ping", "id": 1}')
        assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
        assert answer["id"] is None
    else:
        answer = await raw_answer(ctx.alice, b'{"type": "ping", "id": 77}')
        assert answer == {"type": "pong", "id": 77}
    await check_unchanged(ctx, before)


@pytest.mark.parametrize("rid", [5, "req-5"])
async def test_unknown_type_echoes_id(ctx: Ctx, rid: int | str) -> None:
    before = await snapshot(ctx)
    await ctx.alice.send({"type": "teleport", "id": rid, "conv": ctx.group})
    answer = await ctx.alice.recv_until(lambda f: f.get("type") != "event")
    assert answer["type"] == "error" and answer["code"] == "unknown_type", answer
    assert answer["id"] == rid
    await check_unchanged(ctx, before)


@pytest.mark.parametrize(
    ("frame", "field", "id_echoed"),
    [
        ({"type": "ping"}, "id", False),
        ({"type": "ping", "id": 1.5}, "id", False),
        ({"type": "ping", "id": True}, "id", False),
        ({"type": "ping", "id": "x" * 65}, "id", False),
        ({"type": "ping", "id": [1]}, "id", False),
        ({"id": 9}, "type", True),
        ({"id": 9, "type": 3}, "type", True),
        ({"id": 9, "type": "read", "conv": "{group}", "seq": "5"}, "seq", True),
        ({"id": 9, "type": "read", "conv": "{group}", "seq": -1}, "seq", True),
        ({"id": 9, "type": "read", "conv": "nonsense", "seq": 1}, "conv", True),
        ({"id": 9, "type": "read", "seq": 1}, "conv", True),
        ({"id": 9, "type": "history", "conv": "{group}", "limit": 10_000}, "limit", True),
        ({"id": 9, "type": "sync", "since": [1]}, "since", True),
        ({"id": 9, "type": "sync", "since": {"{group}": "x"}}, "since[{group}]", True),
        ({"id": 9, "type": "group.create", "name": "x", "members": "bob"}, "members", True),
        ({"id": 9, "type": "group.create", "name": "x", "members": ["b b"]}, "members[0]", True),
        ({"id": 9, "type": "group.create", "name": "  ", "members": []}, "name", True),
        (
            {"id": 9, "type": "group.role", "conv": "{group}", "user": "bob", "role": "god"},
            "role",
            True,
        ),
        ({"id": 9, "type": "auth"}, "token", True),
        ({"id": 9, "type": "presence.query", "users": []}, "users", True),
        (
            {"id": 9, "type": "send", "conv": "{group}", "kind": "text", "body": {"text": "x"}},
            "client_msg_id",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "body": {"text": "x"},
            },
            "kind",
            True,
        ),
        (
            {"id": 9, "type": "send", "conv": "{group}", "client_msg_id": "c", "kind": "text"},
            "body",
            True,
        ),
        (
            {"id": 9, "type": "send", "client_msg_id": "c", "kind": "text", "body": {"text": "x"}},
            "conv",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "to": "bob",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "x"},
            },
            "conv",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "to": "b b",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "x"},
            },
            "to",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "to": "alice",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "x"},
            },
            "to",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c" * 65,
                "kind": "text",
                "body": {"text": "x"},
            },
            "client_msg_id",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "video",
                "body": {"text": "x"},
            },
            "kind",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "text",
                "body": "x",
            },
            "body",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": 5},
            },
            "body.text",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "   "},
            },
            "body.text",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "x", "mentions": "bob"},
            },
            "body.mentions",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "x", "mentions": ["bad id!"]},
            },
            "body.mentions[0]",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "x", "mention_all": "yes"},
            },
            "body.mention_all",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "file",
                "body": {"file": {"id": "abc", "name": "a.txt", "size": 1, "mime": "text/plain"}},
            },
            "body.file.id",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "file",
                "body": {
                    "file": {"id": "A" * 64, "name": "a.txt", "size": 1, "mime": "text/plain"}
                },
            },
            "body.file.id",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "{group}",
                "client_msg_id": "c",
                "kind": "file",
                "body": {"file": {"id": "a" * 64, "name": "a.txt", "mime": "text/plain"}},
            },
            "body.file.size",
            True,
        ),
        (
            {
                "id": 9,
                "type": "send",
                "conv": "dm:bob:alice",
                "client_msg_id": "c",
                "kind": "text",
                "body": {"text": "x"},
            },
            "conv",
            True,
        ),
    ],
)
async def test_missing_or_mistyped_field_is_invalid_field(
    ctx: Ctx, frame: dict[str, Any], field: str, id_echoed: bool
) -> None:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{group}", ctx.group)
        if isinstance(value, dict):
            return {fill(k): fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    frame = fill(frame)
    before = await snapshot(ctx)
    await ctx.alice.send(frame)
    answer = await ctx.alice.recv_until(lambda f: f.get("type") != "event")
    assert answer["type"] == "error" and answer["code"] == "invalid_field", answer
    assert answer["field"] == fill(field), answer
    assert answer["id"] == (frame["id"] if id_echoed else None), answer
    await check_unchanged(ctx, before)


# --------------------------------------------------------------------------- sizes


async def test_oversized_frame_is_frame_too_large_and_connection_stays_open(ctx: Ctx) -> None:
    limit = ctx.h.world.config.limits.max_frame_bytes
    before = await snapshot(ctx)
    text = "x" * (2 * limit)  # > max_frame_bytes, < 4x
    frame = {
        "type": "send",
        "id": 1,
        "conv": ctx.group,
        "client_msg_id": "big",
        "kind": "text",
        "body": {"text": text},
    }
    data = ctx.alice.encode(frame)
    assert limit < len(data if isinstance(data, bytes) else data.encode()) < 4 * limit
    answer = await raw_answer(ctx.alice, data)
    assert answer["type"] == "error" and answer["code"] == "frame_too_large", answer
    await check_unchanged(ctx, before)


async def test_frame_above_hard_limit_closes_with_1009(ctx: Ctx) -> None:
    limit = ctx.h.world.config.limits.max_frame_bytes
    before = await snapshot(ctx)
    frame = {
        "type": "send",
        "id": 1,
        "conv": ctx.group,
        "client_msg_id": "huge",
        "kind": "text",
        "body": {"text": "x" * (4 * limit + 100)},
    }
    await ctx.alice.send(frame)
    assert await ctx.alice.expect_close() == 1009
    assert await snapshot(ctx) == before
    await assert_victim_sees_nothing(ctx, before)


async def test_text_too_long(ctx: Ctx) -> None:
    max_chars = ctx.h.world.config.limits.max_text_chars
    before = await snapshot(ctx)
    answer = await ctx.alice.request(
        "send",
        conv=ctx.group,
        client_msg_id="long",
        kind="text",
        body={"text": "字" * (max_chars + 1)},
    )
    assert answer["type"] == "error" and answer["code"] == "text_too_long", answer
    assert answer["field"] == "body.text"
    await check_unchanged(ctx, before)
    # Exactly at the limit is fine (counts characters, not bytes).
    ok = await ctx.alice.request(
        "send",
        conv=ctx.group,
        client_msg_id="exact",
        kind="text",
        body={"text": "字" * max_chars},
    )
    assert ok["type"] == "result", ok


async def test_text_too_long_with_small_limit(start_server: StartServer) -> None:
    h = await start_server(limits={"max_text_chars": 10})
    ctx = await make_ctx(h, "json")
    before = await snapshot(ctx)
    answer = await ctx.alice.request(
        "send", conv=ctx.group, client_msg_id="c1", kind="text", body={"text": "x" * 11}
    )
    assert answer["type"] == "error" and answer["code"] == "text_too_long", answer
    await check_unchanged(ctx, before)


# --------------------------------------------------------------------------- semantics


def send_frame(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "client_msg_id": uuid.uuid4().hex,
        "kind": "text",
        "body": {"text": "hello"},
    }
    base.update(fields)
    return base


async def expect_error(ctx: Ctx, type_: str, code: str, **fields: Any) -> dict[str, Any]:
    before = await snapshot(ctx)
    answer = await ctx.alice.request(type_, **fields)
    assert answer["type"] == "error" and answer["code"] == code, answer
    await check_unchanged(ctx, before)
    return answer


async def test_send_to_conversation_you_are_not_in(ctx: Ctx) -> None:
    await expect_error(ctx, "send", "not_member", **send_frame(conv=ctx.private))


async def test_send_to_unknown_user(ctx: Ctx) -> None:
    await expect_error(ctx, "send", "no_such_user", **send_frame(to="zed"))
    assert await ctx.h.world.store.get_conversation("dm:alice:zed") is None


async def test_send_to_unknown_group(ctx: Ctx) -> None:
    await expect_error(ctx, "send", "no_such_conversation", **send_frame(conv="g:doesnotexist42"))
    assert await ctx.h.world.store.get_conversation("g:doesnotexist42") is None


@pytest.mark.parametrize("conv", ["dm:bob:carol", "dm:carol:dave"])
async def test_send_to_dm_of_others_is_not_member(ctx: Ctx, conv: str) -> None:
    await expect_error(ctx, "send", "not_member", **send_frame(conv=conv))
    assert await ctx.h.world.store.get_conversation("dm:carol:dave") is None


async def test_mentions_of_non_members(ctx: Ctx) -> None:
    answer = await expect_error(
        ctx,
        "send",
        "invalid_field",
        **send_frame(conv=ctx.group, body={"text": "@dave hi", "mentions": ["carol", "dave"]}),
    )
    assert answer["field"] == "body.mentions"


async def test_mention_all_by_plain_member_is_forbidden(ctx: Ctx) -> None:
    await expect_error(
        ctx,
        "send",
        "forbidden",
        **send_frame(conv=ctx.group, body={"text": "@all hi", "mention_all": True}),
    )


async def test_mention_all_in_dm_is_forbidden(ctx: Ctx) -> None:
    await expect_error(
        ctx,
        "send",
        "forbidden",
        **send_frame(conv=ctx.dm, body={"text": "@all hi", "mention_all": True}),
    )


GHOST_FILE = {
    "id": hashlib.sha256(b"never uploaded").hexdigest(),
    "name": "ghost.pdf",
    "size": 14,
    "mime": "application/pdf",
}


@pytest.mark.parametrize(
    ("target", "body", "kind", "code"),
    [
        ({"to": "dave"}, {"text": "@carol", "mentions": ["carol"]}, "text", "invalid_field"),
        ({"to": "dave"}, {"text": "@all", "mention_all": True}, "text", "forbidden"),
        ({"to": "dave"}, {"file": GHOST_FILE}, "file", "no_such_file"),
        ({"conv": "dm:alice:dave"}, {"text": "@all", "mention_all": True}, "text", "forbidden"),
    ],
    ids=["mention-stranger", "mention-all", "ghost-file", "mention-all-by-conv"],
)
async def test_refused_first_dm_message_creates_no_conversation(
    ctx: Ctx, target: dict[str, str], body: dict[str, Any], kind: str, code: str
) -> None:
    """The first message of a 1:1 creates it; a refused first message must not."""
    before = await snapshot(ctx)
    answer = await ctx.alice.request("send", **send_frame(kind=kind, body=body, **target))
    assert answer["type"] == "error" and answer["code"] == code, answer
    created = await ctx.h.world.store.get_conversation("dm:alice:dave")
    assert created is None, f"refused send ({code}) left conversation behind: {created}"
    # Not observable by the client either: the conversation still does not exist.
    answer = await ctx.alice.request("history", conv="dm:alice:dave")
    assert answer["type"] == "error" and answer["code"] == "no_such_conversation", answer
    await check_unchanged(ctx, before)


async def test_duplicate_resend_to_other_peer_stores_nothing(ctx: Ctx) -> None:
    """A resend with a used client_msg_id returns the original and stores nothing,
    even when it names a different (new) 1:1 peer."""
    first = await ctx.alice.request("send", **send_frame(conv=ctx.dm, client_msg_id="once"))
    assert first["type"] == "result", first
    before = await snapshot(ctx)
    again = await ctx.alice.request("send", **send_frame(to="dave", client_msg_id="once"))
    assert again["type"] == "result", again
    assert again["data"] == {**first["data"], "duplicate": True}
    created = await ctx.h.world.store.get_conversation("dm:alice:dave")
    assert created is None, f"duplicate resend created a conversation: {created}"
    assert await snapshot(ctx) == before


async def test_send_to_dm_with_unknown_user_by_conv_id(ctx: Ctx) -> None:
    await expect_error(ctx, "send", "no_such_user", **send_frame(conv="dm:alice:zed"))
    assert await ctx.h.world.store.get_conversation("dm:alice:zed") is None


async def test_group_create_with_unknown_member_creates_nothing(ctx: Ctx) -> None:
    await expect_error(ctx, "group.create", "no_such_user", name="new", members=["bob", "zed"])
    groups = await ctx.alice.request("group.list")
    assert [g["conv"] for g in groups["data"]["groups"]] == [ctx.group]


@pytest.mark.parametrize("what", ["deep-nesting", "bad-utf8", "malformed"])
async def test_hostile_encodings_are_bad_frame(ctx: Ctx, what: str) -> None:
    if ctx.codec == "msgpack":
        data: bytes | str = {
            "deep-nesting": b"\x91" * 50_000 + b"\xc0",
            "bad-utf8": b"\x82\xa4type\xa4ping\xa2id\xa2\xed\xa0",
            "malformed": b"\xdf\xff\xff\xff\xff",  # a map header claiming 4G entries
        }[what]
    else:
        data = {
            "deep-nesting": "[" * 30_000 + "]" * 30_000,
            "bad-utf8": b'{"type": "ping", "id": "\xed\xa0\x80"}',
            "malformed": '{"type": "ping", "id": "\\ud800"}',  # a lone surrogate escape
        }[what]
    before = await snapshot(ctx)
    answer = await raw_answer(ctx.alice, data)
    assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
    assert answer["id"] is None
    await check_unchanged(ctx, before)


async def test_id_of_64_characters_is_echoed(ctx: Ctx) -> None:
    rid = "i" * 64
    await ctx.alice.send({"type": "ping", "id": rid})
    assert await ctx.alice.recv_until(lambda f: f.get("id") == rid) == {"type": "pong", "id": rid}


async def test_file_message_for_never_uploaded_file(ctx: Ctx) -> None:
    file = {
        "id": hashlib.sha256(b"never uploaded").hexdigest(),
        "name": "ghost.pdf",
        "size": 14,
        "mime": "application/pdf",
    }
    await expect_error(
        ctx, "send", "no_such_file", **send_frame(conv=ctx.group, kind="file", body={"file": file})
    )


async def test_file_message_for_file_uploaded_by_someone_else(ctx: Ctx) -> None:
    """A file id alice has never been able to see is as good as non-existent."""
    up = await upload(ctx.h, "bob", b"bob's secret", "s.txt")
    await expect_error(
        ctx, "send", "no_such_file", **send_frame(conv=ctx.group, kind="file", body={"file": up})
    )


async def test_second_auth_is_already_authenticated(ctx: Ctx) -> None:
    answer = await expect_error(
        ctx, "auth", "already_authenticated", token=ctx.h.token("alice", "other")
    )
    assert answer["id"] is not None
    # Still alice on device d1: a message sent now is stored with that device.
    ok = await ctx.alice.request("send", **send_frame(conv=ctx.group))
    assert ok["type"] == "result", ok
    msg = await ctx.h.world.store.get_message(ctx.group, ok["data"]["seq"])
    assert msg is not None and (msg.sender, msg.device) == ("alice", "d1")


async def test_recall_of_someone_elses_message_is_forbidden(ctx: Ctx) -> None:
    await expect_error(ctx, "recall", "forbidden", conv=ctx.dm, seq=1)
    msg = await ctx.h.world.store.get_message(ctx.dm, 1)
    assert msg is not None and not msg.recalled and msg.body == {"text": "hi alice"}


async def test_plain_member_cannot_manage_group(ctx: Ctx) -> None:
    await expect_error(ctx, "group.rename", "forbidden", conv=ctx.group, name="mine")
    await expect_error(ctx, "group.remove", "forbidden", conv=ctx.group, members=["carol"])
    await expect_error(ctx, "group.add", "forbidden", conv=ctx.group, members=["dave"])
    await expect_error(ctx, "group.role", "forbidden", conv=ctx.group, user="carol", role="admin")
    c = await ctx.h.world.store.get_conversation(ctx.group)
    assert c is not None and c.name == "team"


async def test_errors_then_valid_request_still_works(ctx: Ctx) -> None:
    """A burst of bad frames pipelined without waiting: one answer each, in order."""
    frames: list[bytes | str] = [
        encode_any(ctx.codec, [1]),
        ctx.alice.encode({"type": "nope", "id": 1}),
        ctx.alice.encode({"type": "send", "id": 2, **send_frame(conv=ctx.private)}),
        ctx.alice.encode({"type": "ping", "id": 3}),
        ctx.alice.encode({"type": "send", "id": 4, **send_frame(conv=ctx.group)}),
    ]
    for f in frames:
        await ctx.alice.send_raw(f)
    answers = [await ctx.alice.recv_until(lambda f: f.get("type") != "event") for _ in frames]
    assert [(a["type"], a.get("code"), a["id"]) for a in answers] == [
        ("error", "bad_frame", None),
        ("error", "unknown_type", 1),
        ("error", "not_member", 2),
        ("pong", None, 3),
        ("result", None, 4),
    ]


# --------------------------------------------------------------------------- fuzzing

USER_POOL = ["alice", "bob", "carol", "dave", "zed", "", "b b", "A" * 65]
KIND_POOL = ["text", "file", "system", "recall", "video", ""]
SYSTEM_EVENTS = {
    "group_created",
    "member_added",
    "member_removed",
    "member_left",
    "group_renamed",
    "role_changed",
}
# Placeholder for a client_msg_id that is made unique when the frame is sent.
FRESH = "<fresh>"
# Requests whose successful result stores exactly one message.
CREATING = {
    "send",
    "recall",
    "group.create",
    "group.rename",
    "group.add",
    "group.remove",
    "group.leave",
    "group.role",
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=10,
)


def fuzz_frames(convs: list[str], file_ref: dict[str, Any]) -> st.SearchStrategy[tuple[str, Any]]:
    """("obj", value) is encoded with the connection's codec; ("raw", data) is sent as is."""
    conv_names = st.sampled_from([*convs, "g:doesnotexist42", "dm:alice:zed", "dm:bob:carol", "x"])
    convs_now = st.builds(lambda i: convs[i % len(convs)], st.integers(0, 10**6))
    conv_values = st.one_of(conv_names, json_values)
    users = st.one_of(st.sampled_from(USER_POOL), json_values)
    user_lists = st.one_of(st.lists(st.sampled_from(USER_POOL[:5]), max_size=4), json_values)
    seqs = st.one_of(st.integers(min_value=-2, max_value=12), json_values)
    texts = st.one_of(
        st.text(alphabet=string.ascii_letters + " @字", min_size=0, max_size=30), json_values
    )
    plain_texts = st.text(alphabet=string.ascii_letters + " @字", min_size=1, max_size=30)
    text_body = st.fixed_dictionaries(
        {"text": texts},
        optional={"mentions": user_lists, "mention_all": st.one_of(st.booleans(), json_values)},
    )
    file_body = st.fixed_dictionaries(
        {
            "file": st.one_of(
                st.just(file_ref),
                st.fixed_dictionaries(
                    {
                        "id": st.one_of(st.just(file_ref["id"]), st.just("0" * 64), json_values),
                        "name": st.one_of(st.just("a.txt"), json_values),
                        "size": st.one_of(st.integers(min_value=-1, max_value=100), json_values),
                        "mime": st.one_of(st.just("text/plain"), json_values),
                    }
                ),
                json_values,
            )
        }
    )
    field_values: dict[str, st.SearchStrategy[Any]] = {
        "conv": conv_values,
        "to": users,
        "client_msg_id": st.one_of(st.text(alphabet="abc", min_size=1, max_size=3), json_values),
        "kind": st.one_of(st.sampled_from(KIND_POOL), json_values),
        "body": st.one_of(text_body, file_body, json_values),
        "seq": seqs,
        "before_seq": seqs,
        "limit": st.one_of(st.integers(min_value=-1, max_value=300), json_values),
        "since": st.one_of(
            st.dictionaries(st.one_of(conv_names, st.text(max_size=10)), seqs, max_size=3),
            json_values,
        ),
        "name": st.one_of(st.text(max_size=70), json_values),
        "members": user_lists,
        "users": user_lists,
        "user": users,
        "role": st.one_of(st.sampled_from(["admin", "member", "owner"]), json_values),
        "token": st.one_of(st.text(max_size=20), json_values),
    }
    ids = st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(max_size=70),
        json_values,
    )

    @st.composite
    def request_dicts(draw: st.DrawFn) -> dict[str, Any]:
        frame: dict[str, Any] = {}
        if draw(st.integers(0, 9)) > 0:
            frame["id"] = draw(ids)
        if draw(st.integers(0, 9)) > 0:
            frame["type"] = draw(
                st.one_of(st.sampled_from(REQUEST_TYPES), st.text(max_size=12), json_values)
            )
        keys = draw(st.lists(st.sampled_from(sorted(field_values)), max_size=7, unique=True))
        for key in keys:
            frame[key] = draw(field_values[key])
        extra = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))
        for k, v in extra.items():
            frame.setdefault(k, v)
        return frame

    members_pool = ["alice", "bob", "carol", "dave"]

    @st.composite
    def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
        """Well-formed requests (which may still be refused: roles, membership...)."""
        conv = draw(convs_now)  # `convs` grows as alice creates groups
        seq = draw(st.integers(min_value=0, max_value=8))
        some_users = draw(st.lists(st.sampled_from(members_pool), min_size=1, max_size=3))
        name = draw(st.text(alphabet=string.ascii_letters + " 字", min_size=1, max_size=20))
        # Half of them are sends: the interesting path for "nothing stored on error".
        t = draw(st.sampled_from(["send"] * len(REQUEST_TYPES) + list(REQUEST_TYPES)))
        frame: dict[str, Any] = {"type": t, "id": draw(st.integers(0, 10**6) | st.text(max_size=8))}
        if t == "send":
            if draw(st.booleans()):
                frame["conv"] = conv
            else:
                frame["to"] = draw(st.sampled_from(["bob", "carol", "dave", "zed"]))
            # A small alphabet: repeats happen and must come back as duplicates.
            frame["client_msg_id"] = draw(
                st.one_of(
                    st.just(FRESH),
                    st.just(FRESH),
                    st.just(FRESH),
                    st.text(alphabet="abcdef", min_size=1, max_size=3),
                )
            )
            if draw(st.integers(0, 4)) == 0:
                frame["kind"], frame["body"] = "file", {"file": file_ref}
            else:
                body: dict[str, Any] = {"text": draw(st.one_of(plain_texts, plain_texts, texts))}
                if draw(st.integers(0, 3)) == 0:
                    body["mentions"] = some_users
                if draw(st.integers(0, 4)) == 0:
                    body["mention_all"] = True
                frame["kind"], frame["body"] = "text", body
        elif t == "sync":
            frame["since"] = {conv: seq}
            if draw(st.booleans()):
                frame["limit"] = draw(st.integers(min_value=1, max_value=200))
        elif t == "history":
            frame["conv"] = conv
            if draw(st.booleans()):
                frame["before_seq"] = seq + 1
        elif t in ("read", "read_status", "recall"):
            frame["conv"], frame["seq"] = conv, seq
        elif t == "group.create":
            frame["name"], frame["members"] = name, some_users
        elif t == "group.rename":
            frame["conv"], frame["name"] = conv, name
        elif t in ("group.add", "group.remove"):
            frame["conv"], frame["members"] = conv, some_users
        elif t in ("group.leave", "group.members"):
            frame["conv"] = conv
        elif t == "group.role":
            frame["conv"], frame["user"] = conv, some_users[0]
            frame["role"] = draw(st.sampled_from(["admin", "member"]))
        elif t.startswith("presence."):
            frame["users"] = some_users
        elif t == "auth":
            frame["token"] = draw(st.text(max_size=20))
        return frame

    @st.composite
    def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
        """A well-formed request with one field dropped or replaced by junk."""
        frame = draw(valid_requests())
        key = draw(st.sampled_from(sorted(frame)))
        if draw(st.booleans()):
            del frame[key]
        else:
            frame[key] = draw(json_values)
        return frame

    return st.one_of(
        st.tuples(st.just("obj"), valid_requests()),
        st.tuples(st.just("obj"), valid_requests()),
        st.tuples(st.just("obj"), valid_requests()),
        st.tuples(st.just("obj"), mutated_requests()),
        st.tuples(st.just("obj"), request_dicts()),
        st.tuples(st.just("obj"), request_dicts()),
        st.tuples(st.just("obj"), json_values),
        st.tuples(st.just("raw"), st.binary(max_size=64)),
        st.tuples(st.just("raw"), st.text(max_size=64)),
    )


def expected_id(frame: Any) -> Any:
    """What the protocol says the answer's id must be (section 2)."""
    if not isinstance(frame, dict):
        return None
    rid = frame.get("id")
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) and -(2**63) <= rid < 2**63:
        return rid
    if isinstance(rid, str) and len(rid) <= 64:
        return rid
    return None


def check_body(kind: str, body: Any, recalled: bool, max_text: int) -> None:
    assert isinstance(body, dict), body
    if recalled:
        assert kind in ("text", "file") and body == {}, (kind, body)
        return
    if kind == "text":
        assert set(body) <= {"text", "mentions", "mention_all", "urgent"} and "text" in body, body
        assert isinstance(body["text"], str) and body["text"].strip()
        assert len(body["text"]) <= max_text
        if "mentions" in body:
            assert isinstance(body["mentions"], list) and body["mentions"]
            assert all(isinstance(u, str) for u in body["mentions"])
        if "mention_all" in body:
            assert body["mention_all"] is True
        if "urgent" in body:
            assert body["urgent"] is True
    elif kind == "file":
        assert set(body) in ({"file"}, {"file", "urgent"}), body
        f = body["file"]
        assert set(f) == {"id", "name", "size", "mime"}, f
        assert isinstance(f["id"], str) and len(f["id"]) == 64
        assert isinstance(f["name"], str) and isinstance(f["mime"], str)
        assert isinstance(f["size"], int) and not isinstance(f["size"], bool)
    elif kind == "system":
        assert body.get("event") in SYSTEM_EVENTS, body
        assert isinstance(body.get("actor"), str)
    elif kind == "recall":
        assert set(body) == {"target_seq"} and isinstance(body["target_seq"], int), body
    else:
        raise AssertionError(f"unexpected kind {kind!r}")


async def upload(h: Harness, user: str, data: bytes, name: str = "a.txt") -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{h.world.http_url}/api/v1/files",
            params={"name": name},
            data=data,
            headers={
                "Authorization": f"Bearer {h.token(user, 'web')}",
                "Content-Type": "text/plain",
            },
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out


async def fuzz_live_connection(h: Harness, codec: str) -> None:
    ctx = await make_ctx(h, codec)
    file_ref = await upload(h, "alice", b"fuzz file")
    initial = await count_messages(h)
    alice = ctx.alice
    max_frame = h.world.config.limits.max_frame_bytes
    known_convs = list(ctx.convs)
    frames = fuzz_frames(known_convs, file_ref)
    stats = {"examples": 0, "created": 0, "results": 0}
    loop = asyncio.get_running_loop()

    async def step(tag: str, frame: Any) -> None:
        stats["examples"] += 1
        if isinstance(frame, dict) and frame.get("client_msg_id") == FRESH:
            frame["client_msg_id"] = uuid.uuid4().hex  # hypothesis replays; keep sends new
        wire: bytes | str = frame if tag == "raw" else encode_any(codec, frame)
        size = len(wire) if isinstance(wire, bytes) else len(wire.encode())
        assert size < max_frame  # keep below every size limit
        await alice.send_raw(wire)
        sentinel = "sentinel-" + uuid.uuid4().hex
        await alice.send({"type": "ping", "id": sentinel})
        answers: list[dict[str, Any]] = []
        while True:
            f = await alice.recv(timeout=5.0)
            if f.get("type") == "event":
                assert f.get("event") in ("message", "read", "presence"), f
                assert isinstance(f.get("data"), dict), f
                continue
            if f.get("type") == "pong" and f.get("id") == sentinel:
                break
            answers.append(f)
        # Exactly one answer per frame.
        assert len(answers) == 1, (tag, frame, answers)
        answer = answers[0]
        assert answer["type"] in ("result", "error", "pong"), answer
        if tag == "obj" and isinstance(frame, dict):
            assert answer["id"] == expected_id(frame), (frame, answer)
        elif tag == "obj":
            assert answer["type"] == "error" and answer["code"] == "bad_frame", (frame, answer)
            assert answer["id"] is None
        else:
            # Raw bytes/text: at best a map without a usable id; an error either way.
            assert answer["type"] == "error", (frame, answer)
            assert answer["id"] is None, (frame, answer)
        if answer["type"] == "error":
            assert isinstance(answer.get("code"), str), answer
            assert isinstance(answer.get("message"), str), answer
            assert answer["code"] not in ("internal", "not_authenticated", "frame_too_large"), (
                frame,
                answer,
            )
            return
        if answer["type"] == "pong":
            assert isinstance(frame, dict) and frame.get("type") == "ping", (frame, answer)
            return
        stats["results"] += 1
        assert isinstance(frame, dict)
        t, data = frame.get("type"), answer["data"]
        assert isinstance(data, dict), answer
        if t == "send":
            stats["created"] += 0 if data["duplicate"] else 1
        elif t == "group.add":
            stats["created"] += 1 if data["added"] else 0
        elif t in CREATING:
            stats["created"] += 1
        if t == "group.create":
            known_convs.append(data["conv"])

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(data=st.data())
    def run_one(data: st.DataObject) -> None:
        tag, frame = data.draw(frames, label="frame")
        asyncio.run_coroutine_threadsafe(step(tag, frame), loop).result(timeout=30)

    # Hypothesis drives the examples from a worker thread; each example's I/O
    # runs on this loop, against the one live connection.
    await asyncio.to_thread(run_one)
    assert stats["examples"] >= 100

    # The connection survived everything.
    await assert_still_open(alice)
    assert alice.ws.close_code is None
    # Exactly the messages that successful requests created...
    assert await count_messages(h) == initial + stats["created"]
    # ...and every stored message is well-formed, with gapless seqs.
    store = h.world.store
    all_convs = [r[0] for r in await h.read_rows("SELECT id FROM conversations")]
    total = 0
    for conv in all_convs:
        c = await store.get_conversation(conv)
        assert c is not None
        msgs = await store.messages_after(conv, 0, 100_000)
        assert [m.seq for m in msgs] == list(range(1, c.last_seq + 1)), conv
        for m in msgs:
            assert m.kind in ("text", "file", "system", "recall"), m
            check_body(m.kind, m.body, m.recalled, h.world.config.limits.max_text_chars)
        total += len(msgs)
    assert total == initial + stats["created"]
    # Bob has not been reading; empty his socket so it can close promptly.
    await drain_wire(ctx.bob)
    # Nothing reached conversations alice was never in.
    for conv in (ctx.private, ctx.dm_bc):
        msgs = await store.messages_after(conv, 0, 100_000)
        assert all(m.sender != "alice" for m in msgs), msgs
    # A 1:1 conversation is created by its first message (section 4.2): refused
    # or duplicate sends must not leave empty ones behind.
    empty_dms = []
    for conv in all_convs:
        c = await store.get_conversation(conv)
        if c is not None and c.kind == "dm" and c.last_seq == 0:
            empty_dms.append(conv)
    assert empty_dms == [], f"conversations created without a message: {empty_dms}"


@pytest.mark.parametrize("codec", CODECS)
async def test_fuzz_live_connection(server: Harness, codec: str) -> None:
    await fuzz_live_connection(server, codec)
