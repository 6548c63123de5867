"""Who talks to whom does not leak; read events only when a cursor moves (issue #12, 8 and 11).

Every conversation request about someone else's 1:1 (or notice) conversation
answers exactly what ``send`` answers, whether the conversation exists or not.
A ``read`` emits a ``read`` event only when the cursor moves, to the reader's
other devices and, in a 1:1, to the peer -- never to the reading device.
"""

from __future__ import annotations

from typing import Any

from imserver_sdk import BusinessClient
from tests.support import Harness, RawClient

#: Every request that names a conversation, with the fields it needs.
CONVERSATION_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("history", {}),
    ("read", {"seq": 1}),
    ("read_status", {"seq": 1}),
    ("recall", {"seq": 1}),
    ("ding.confirm", {"seq": 1}),
    ("ding.status", {"seq": 1}),
    ("group.members", {}),
    ("group.rename", {"name": "x"}),
    ("group.add", {"members": ["alice"]}),
    ("group.leave", {}),
    ("send", {"client_msg_id": "probe-1", "kind": "text", "body": {"text": "hi"}}),
]


async def _answers(raw: RawClient, conv: str) -> dict[str, tuple[str, str, str]]:
    """Each request's error as (type, code, message with the conv id blanked out)."""
    out: dict[str, tuple[str, str, str]] = {}
    for type_, fields in CONVERSATION_REQUESTS:
        answer = await raw.request(type_, conv=conv, **fields)
        out[type_] = (answer["type"], answer.get("code", ""), answer.get("message", ""))
        out[type_] = (out[type_][0], out[type_][1], out[type_][2].replace(conv, "<conv>"))
    return out


async def test_someone_elses_dm_answers_the_same_whether_it_exists_or_not(
    server: Harness,
) -> None:
    await server.users("bob", "carol", "dave")
    bob = await server.client("bob")
    await bob.send_text("私聊", to="carol")  # dm:bob:carol exists; dm:bob:dave does not
    alice = await server.raw("alice")
    existing = await _answers(alice, "dm:bob:carol")
    missing = await _answers(alice, "dm:bob:dave")
    assert existing == missing
    assert {code for _, code, _ in existing.values()} == {"not_member"}
    # Nothing was written by the probes.
    conv = await server.world.store.get_conversation("dm:bob:carol")
    assert conv is not None and conv.last_seq == 1
    assert await server.world.store.get_conversation("dm:bob:dave") is None


async def test_someone_elses_notice_conversation_does_not_leak(
    card_server: Harness, oa: BusinessClient
) -> None:
    await card_server.users("li", "wang", "alice")
    await oa.send_notice("通知", "内容", users=["li"])  # n:oa:li exists; n:oa:wang does not
    alice = await card_server.raw("alice")
    assert await _answers(alice, "n:oa:li") == await _answers(alice, "n:oa:wang")


async def test_your_own_dm_that_does_not_exist_yet_is_still_no_such_conversation(
    server: Harness,
) -> None:
    await server.users("bob")
    alice = await server.raw("alice")
    answer = await alice.request("history", conv="dm:alice:bob")
    assert answer["code"] == "no_such_conversation"


def _is_read(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "event" and frame.get("event") == "read"


async def _reads_until_message(raw: RawClient, text: str) -> list[dict[str, Any]]:
    """The ``read`` events this socket got before the ``message`` event carrying ``text``."""
    reads: list[dict[str, Any]] = []
    while True:
        frame = await raw.recv_until(
            lambda f: (
                _is_read(f)
                or (f.get("event") == "message" and f["data"]["body"].get("text") == text)
            )
        )
        if not _is_read(frame):
            return reads
        reads.append(frame["data"])


async def test_read_emits_only_when_the_cursor_moves_and_not_to_the_reader(
    server: Harness,
) -> None:
    await server.users("alice", "bob")
    pc = await server.raw("alice", "pc")
    phone = await server.raw("alice", "phone")
    bob = await server.raw("bob", "d1")
    bob_tab = await server.raw("bob", "tablet")
    for i in range(3):
        sent = await bob.request(
            "send", to="alice", client_msg_id=f"m{i}", kind="text", body={"text": f"m{i}"}
        )
        assert sent["type"] == "result", sent
    conv = "dm:alice:bob"

    moved = await pc.request("read", conv=conv, seq=2)
    assert moved["data"] == {"conv": conv, "read_seq": 2, "unread": 1}
    # A lower seq moves nothing: the result says so, and no event goes anywhere.
    stayed = await pc.request("read", conv=conv, seq=1)
    assert stayed["data"] == {"conv": conv, "read_seq": 2, "unread": 1}
    again = await phone.request("read", conv=conv, seq=2)  # same seq: no move either
    assert again["data"]["read_seq"] == 2

    # A message after all of that marks the end of what each socket was sent.
    end = await bob.request(
        "send", to="alice", client_msg_id="end", kind="text", body={"text": "end"}
    )
    assert end["type"] == "result"
    expected = [{"conv": conv, "user": "alice", "seq": 2}]
    assert await _reads_until_message(phone, "end") == expected  # the reader's other device
    assert await _reads_until_message(bob, "end") == expected  # the peer, every device
    assert await _reads_until_message(bob_tab, "end") == expected
    assert await _reads_until_message(pc, "end") == []  # never the reading device


async def test_group_read_goes_to_the_readers_other_devices_only(server: Harness) -> None:
    await server.users("alice", "bob", "carol")
    pc = await server.raw("alice", "pc")
    phone = await server.raw("alice", "phone")
    carol = await server.raw("carol")
    created = await pc.request("group.create", name="科室", members=["bob", "carol"])
    conv = created["data"]["conv"]
    sent = await carol.request(
        "send", conv=conv, client_msg_id="g1", kind="text", body={"text": "g1"}
    )
    seq = sent["data"]["seq"]
    await pc.request("read", conv=conv, seq=seq)
    await carol.request("send", conv=conv, client_msg_id="g2", kind="text", body={"text": "g2"})
    assert await _reads_until_message(phone, "g2") == [{"conv": conv, "user": "alice", "seq": seq}]
    assert await _reads_until_message(pc, "g2") == []
    assert await _reads_until_message(carol, "g2") == []  # other members: read_status instead
