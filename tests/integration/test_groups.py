"""Group lifecycle, roles and permissions; every change is an ordered system message."""

from __future__ import annotations

from typing import Any

import pytest

from imserver_sdk import ServerError
from tests.support import Harness


async def expect_error(code: str, coro: Any) -> None:
    with pytest.raises(ServerError) as info:
        await coro
    assert info.value.code == code


async def test_group_lifecycle_and_system_messages(server: Harness) -> None:
    await server.users("bob", "carol", "dave")
    alice = await server.client("alice")
    bob = await server.client("bob")
    g = await alice.create_group("县办公室", ["bob", "carol"])
    conv = g["conv"]
    assert g["members"] == ["alice", "bob", "carol"]
    await alice.rename_group(conv, "县政府办公室")
    assert (await alice.add_members(conv, ["dave", "bob"]))["added"] == ["dave"]
    await alice.set_role(conv, "bob", "admin")
    assert (await bob.remove_members(conv, ["carol"]))["removed"] == ["carol"]
    dave = await server.client("dave")
    await dave.leave_group(conv)

    events = [m["body"]["event"] for m in (await alice.history(conv))["messages"]]
    assert events == [
        "group_created",
        "group_renamed",
        "member_added",
        "role_changed",
        "member_removed",
        "member_left",
    ]
    members = (await alice.group_members(conv))["members"]
    assert members == [{"user": "alice", "role": "owner"}, {"user": "bob", "role": "admin"}]
    groups = (await bob.list_groups())["groups"]
    assert [(x["conv"], x["name"], x["role"], x["members"]) for x in groups] == [
        (conv, "县政府办公室", "admin", 2)
    ]
    # carol was removed: she was told, and can no longer send or read.
    carol = await server.client("carol")
    assert carol.messages(conv) == []  # no longer listed in her sync
    await expect_error("not_member", carol.send_text("still here?", conv=conv))
    await expect_error("not_member", carol.history(conv))


async def test_group_permissions(server: Harness) -> None:
    await server.users("bob", "carol")
    alice = await server.client("alice")
    bob = await server.client("bob")
    carol = await server.client("carol")
    conv = (await alice.create_group("权限", ["bob", "carol"]))["conv"]
    before = (await server.world.store.get_conversation(conv)).last_seq  # type: ignore[union-attr]
    await expect_error("forbidden", bob.rename_group(conv, "x"))
    await expect_error("forbidden", bob.add_members(conv, ["carol"]))
    await expect_error("forbidden", bob.remove_members(conv, ["carol"]))
    await expect_error("forbidden", bob.set_role(conv, "carol", "admin"))
    await expect_error("forbidden", alice.leave_group(conv))
    await expect_error("forbidden", bob.send_text("@all", conv=conv, mention_all=True))
    await alice.set_role(conv, "bob", "admin")
    await alice.set_role(conv, "carol", "admin")
    await expect_error("forbidden", bob.remove_members(conv, ["alice"]))
    await expect_error("forbidden", bob.remove_members(conv, ["carol"]))
    await expect_error("no_such_user", alice.add_members(conv, ["nobody"]))
    await expect_error("no_such_conversation", carol.group_members("g:doesnotexist1"))
    ack = await bob.send_text("全体注意", conv=conv, mention_all=True)
    assert ack.seq == before + 3  # two role changes, then this message


async def test_group_member_limit(start_server: Any) -> None:
    server: Harness = await start_server(limits={"max_group_members": 3})
    await server.users("b", "c", "d")
    a = await server.client("a")
    await expect_error("too_many_members", a.create_group("big", ["b", "c", "d"]))
    conv = (await a.create_group("ok", ["b", "c"]))["conv"]
    await expect_error("too_many_members", a.add_members(conv, ["d"]))
    members = await server.world.store.members(conv)
    assert [m.user for m in members] == ["a", "b", "c"]


async def test_presence_query_and_subscription(server: Harness) -> None:
    await server.users("bob")
    alice = await server.client("alice")
    assert (await alice.presence_subscribe(["bob"]))["online"] == {"bob": False}
    bob1 = await server.client("bob", "pc")
    ev = await alice.next_event("presence", timeout=5)
    assert ev.data == {"user": "bob", "online": True}
    bob2 = await server.client("bob", "phone")
    assert (await alice.presence_query(["bob", "alice"]))["online"] == {"bob": True, "alice": True}
    await bob1.close()
    await bob2.close()
    ev = await alice.next_event("presence", timeout=5)
    assert ev.data == {"user": "bob", "online": False}  # only when the last device left
    await alice.presence_unsubscribe(["bob"])
    await server.client("bob", "tablet")
    with pytest.raises(TimeoutError):
        await alice.next_event("presence", timeout=0.3)
