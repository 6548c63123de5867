"""The Store contract (imserver/store/base.py), run against every implementation.

Each backend is a param of the ``store_factory`` fixture; the ``store`` fixture
opens one store from it. To run this suite against another implementation
(PostgreSQL, ...), add its name to ``BACKENDS`` and a branch to
``store_factory`` that opens it on fresh, private storage.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from imserver.errors import NoSuchMessage, NotMember, TooManyMembers
from imserver.store.base import Store
from imserver.store.postgres import PostgresStore
from imserver.store.records import (
    ROLE_ADMIN,
    ROLE_MEMBER,
    ROLE_OWNER,
    FileMeta,
    MembershipChange,
    Message,
    NewMessage,
)
from imserver.store.sqlite.schema import MIGRATIONS
from imserver.store.sqlite.store import SqliteStore
from tests.postgres_support import (
    PostgresUnavailable,
    applied_migrations,
    drop_schema,
    fresh_dsn,
)

BACKENDS = ["sqlite", "postgres"]

DM = "dm:alice:bob"
GROUP = "g:group0001"
T0 = 1_764_150_000_000
FILE_ID = "f" * 64


class ContractStore(Store, Protocol):
    @property
    def commit_stats(self) -> tuple[int, int]:
        """(transactions committed, jobs in them)."""


@dataclass
class StoreFactory:
    """Opens stores of one backend on the same storage (to test reopening)."""

    name: str
    open_store: Callable[[], Awaitable[ContractStore]]
    applied_migrations: Callable[[], list[int]]
    opened: list[ContractStore] = field(default_factory=list)

    async def open(self) -> ContractStore:
        store = await self.open_store()
        self.opened.append(store)
        return store


@pytest.fixture(params=BACKENDS)
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    if request.param == "sqlite":
        path = tmp_path / "store" / "imserver.db"

        async def open_sqlite() -> ContractStore:
            store = SqliteStore(path, synchronous="NORMAL")
            await store.open()
            return store

        def sqlite_migrations() -> list[int]:
            conn = sqlite3.connect(path)
            try:
                return [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
            finally:
                conn.close()

        factory = StoreFactory("sqlite", open_sqlite, sqlite_migrations)
    elif request.param == "postgres":
        try:
            dsn, schema = fresh_dsn()  # an empty schema of this run's own database
        except PostgresUnavailable as e:
            pytest.fail(str(e))

        async def open_postgres() -> ContractStore:
            store = PostgresStore(dsn, min_pool=1, max_pool=4)
            await store.open()
            return store

        factory = StoreFactory("postgres", open_postgres, lambda: applied_migrations(dsn))
        request.addfinalizer(lambda: drop_schema(schema))
    else:  # pragma: no cover
        raise AssertionError(f"unknown store backend {request.param}")
    yield factory
    for store in factory.opened:
        await store.close()  # idempotent: a test may already have closed it


@pytest.fixture
async def store(store_factory: StoreFactory) -> ContractStore:
    store = await store_factory.open()
    await store.upsert_users([(u, u.title()) for u in ("alice", "bob", "carol", "dave")], T0)
    return store


def text(conv: str, sender: str, cmid: str | None, body: str = "hi", ts: int = T0) -> NewMessage:
    return NewMessage(conv, sender, "d1", "text", {"text": body}, ts, cmid)


def system(conv: str, actor: str, event: str, ts: int = T0, **extra: Any) -> NewMessage:
    return NewMessage(conv, actor, "d1", "system", {"event": event, "actor": actor, **extra}, ts)


async def make_group(
    store: ContractStore, owner: str = "alice", members: tuple[str, ...] = ("bob", "carol")
) -> Message:
    return await store.create_group(
        GROUP, "Office", owner, members, system(GROUP, owner, "group_created")
    )


async def last_seq(store: ContractStore, conv: str) -> int:
    c = await store.get_conversation(conv)
    assert c is not None
    return c.last_seq


async def read_seq(store: ContractStore, conv: str, user: str) -> int:
    (m,) = [m for m in await store.members(conv) if m.user == user]
    return m.read_seq


# -- lifecycle ---------------------------------------------------------------------------
async def test_migrations_apply_once(store_factory: StoreFactory) -> None:
    first = await store_factory.open()
    await first.upsert_users([("alice", "Alice")], T0)
    await first.close()
    assert store_factory.applied_migrations() == [v for v, _, _ in MIGRATIONS]

    second = await store_factory.open()  # same storage: nothing to migrate again
    assert await second.existing_users(["alice"]) == {"alice"}
    await second.close()
    assert store_factory.applied_migrations() == [v for v, _, _ in MIGRATIONS]


async def test_close_is_idempotent(store_factory: StoreFactory) -> None:
    s = await store_factory.open()
    await s.close()
    await s.close()


# -- users -------------------------------------------------------------------------------
async def test_upsert_and_existing_users(store: ContractStore) -> None:
    assert await store.upsert_users([("erin", "Erin"), ("frank", "Frank")], T0) == 2
    assert await store.existing_users(["erin", "frank", "ghost", "erin"]) == {"erin", "frank"}
    assert await store.existing_users([]) == set()
    # upserting again renames, it does not duplicate or fail
    assert await store.upsert_users([("erin", "Erin B.")], T0 + 1) == 1
    assert await store.existing_users(["erin"]) == {"erin"}


async def test_existing_users_with_many_ids(store: ContractStore) -> None:
    ids = [f"user{i:04d}" for i in range(1200)]
    await store.upsert_users([(u, u) for u in ids[::2]], T0)
    found = await store.existing_users(ids)
    assert found == set(ids[::2])


# -- conversations -----------------------------------------------------------------------
async def test_get_unknown_conversation(store: ContractStore) -> None:
    assert await store.get_conversation("g:nothing00") is None
    assert await store.members("g:nothing00") == []
    assert await store.member_role("g:nothing00", "alice") is None


async def test_ensure_dm_is_idempotent(store: ContractStore) -> None:
    first = await store.ensure_dm(DM, "alice", "bob", T0)
    assert (first.id, first.kind, first.last_seq, first.created_at) == (DM, "dm", 0, T0)
    await store.append_message(text(DM, "alice", "c1"))
    again = await store.ensure_dm(DM, "alice", "bob", T0 + 5000)
    assert again.id == DM
    assert again.created_at == T0  # not re-created
    assert again.last_seq == 1  # messages kept
    members = await store.members(DM)
    assert [(m.user, m.role) for m in members] == [("alice", ROLE_MEMBER), ("bob", ROLE_MEMBER)]


async def test_create_group_with_roles_and_first_notice(store: ContractStore) -> None:
    notice = await store.create_group(
        GROUP,
        "Office",
        "alice",
        ["bob", "carol", "bob", "alice"],  # repeats and the owner are harmless
        system(GROUP, "alice", "group_created"),
    )
    assert (notice.conv, notice.seq, notice.kind, notice.sender) == (GROUP, 1, "system", "alice")
    assert notice.body["event"] == "group_created"
    conv = await store.get_conversation(GROUP)
    assert conv is not None
    assert (conv.kind, conv.name, conv.owner, conv.last_seq) == ("group", "Office", "alice", 1)
    roles = {m.user: m.role for m in await store.members(GROUP)}
    assert roles == {"alice": ROLE_OWNER, "bob": ROLE_MEMBER, "carol": ROLE_MEMBER}
    assert await store.member_role(GROUP, "alice") == ROLE_OWNER
    assert await store.member_role(GROUP, "bob") == ROLE_MEMBER
    assert await store.member_role(GROUP, "dave") is None
    assert await store.messages_after(GROUP, 0, 10) == [notice]


async def test_conversations_of(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    await make_group(store)
    await store.append_message(text(DM, "bob", "b1"))
    states = {s.conv: s for s in await store.conversations_of("alice")}
    assert set(states) == {DM, GROUP}
    assert (states[DM].kind, states[DM].last_seq, states[DM].read_seq) == ("dm", 1, 0)
    assert states[DM].member_count == 2
    g = states[GROUP]
    assert (g.kind, g.name, g.role, g.member_count, g.last_seq) == (
        "group",
        "Office",
        "owner",
        3,
        1,
    )
    assert {s.conv for s in await store.conversations_of("dave")} == set()


# -- messages ----------------------------------------------------------------------------
async def test_append_gives_gapless_seqs_from_1_per_conversation(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    await make_group(store)  # the group's notice is seq 1
    dm_seqs, group_seqs = [], []
    for i in range(5):
        r = await store.append_message(text(DM, "alice" if i % 2 else "bob", f"d{i}"))
        assert r.duplicate is False
        dm_seqs.append(r.message.seq)
        g = await store.append_message(text(GROUP, "carol", f"g{i}", body=f"m{i}"))
        group_seqs.append(g.message.seq)
    assert dm_seqs == [1, 2, 3, 4, 5]
    assert group_seqs == [2, 3, 4, 5, 6]
    assert await last_seq(store, DM) == 5
    assert await last_seq(store, GROUP) == 6


async def test_appended_message_is_returned_as_stored(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    new = NewMessage(DM, "alice", "phone", "text", {"text": "中文 ✓", "mentions": ["bob"]}, T0, "c")
    r = await store.append_message(new)
    expected = Message(DM, 1, "alice", "phone", "text", new.body, T0, "c", False)
    assert r.message == expected
    assert await store.get_message(DM, 1) == expected
    assert await store.get_message(DM, 2) is None


async def test_messages_are_durable_across_reopen(store_factory: StoreFactory) -> None:
    s = await store_factory.open()
    await s.upsert_users([("alice", "A"), ("bob", "B")], T0)
    await s.ensure_dm(DM, "alice", "bob", T0)
    sent = [(await s.append_message(text(DM, "alice", f"c{i}", f"m{i}"))).message for i in range(3)]
    await s.set_read_cursor(DM, "bob", 2)
    await s.close()

    s2 = await store_factory.open()
    assert await s2.messages_after(DM, 0, 100) == sent
    assert await last_seq(s2, DM) == 3
    assert await read_seq(s2, DM, "bob") == 2
    r = await s2.append_message(text(DM, "bob", "after-reopen"))
    assert r.message.seq == 4
    again = await s2.append_message(text(DM, "alice", "c0"))  # idempotency survives too
    assert again.duplicate is True and again.message == sent[0]


async def test_duplicate_client_msg_id_returns_original_and_stores_nothing(
    store: ContractStore,
) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    first = await store.append_message(text(DM, "alice", "same", "original", ts=T0))
    assert first.duplicate is False
    resend = await store.append_message(text(DM, "alice", "same", "changed", ts=T0 + 999))
    assert resend.duplicate is True
    assert resend.message == first.message
    assert resend.message.body == {"text": "original"}
    assert await last_seq(store, DM) == 1
    assert len(await store.messages_after(DM, 0, 100)) == 1
    # another sender may use the same client_msg_id
    other = await store.append_message(text(DM, "bob", "same"))
    assert other.duplicate is False and other.message.seq == 2


async def test_messages_without_client_msg_id_are_never_duplicates(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    a = await store.append_message(text(DM, "alice", None))
    b = await store.append_message(text(DM, "alice", None))
    assert (a.duplicate, b.duplicate) == (False, False)
    assert (a.message.seq, b.message.seq) == (1, 2)


async def test_non_member_append_is_rejected_and_stores_nothing(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    await store.append_message(text(DM, "alice", "c1"))
    with pytest.raises(NotMember):
        await store.append_message(text(DM, "carol", "intruder"))
    assert await last_seq(store, DM) == 1
    assert [m.sender for m in await store.messages_after(DM, 0, 100)] == ["alice"]
    # the rejected id was not consumed either
    await store.ensure_dm("dm:bob:carol", "bob", "carol", T0)
    r = await store.append_message(text("dm:bob:carol", "carol", "intruder"))
    assert r.duplicate is False and r.message.seq == 1


async def test_append_to_unknown_conversation_is_rejected(store: ContractStore) -> None:
    with pytest.raises(NotMember):
        await store.append_message(text("g:nothing00", "alice", "c1"))
    assert await store.get_conversation("g:nothing00") is None


async def test_concurrent_appends_are_gapless_and_group_committed(store: ContractStore) -> None:
    await make_group(store, members=("bob", "carol", "dave"))  # seq 1
    senders = ["alice", "bob", "carol", "dave"]
    batches0, jobs0 = store.commit_stats
    results = await asyncio.gather(
        *(
            store.append_message(text(GROUP, senders[i % 4], f"c{i}", body=f"m{i}"))
            for i in range(500)
        )
    )
    batches1, jobs1 = store.commit_stats

    seqs = [r.message.seq for r in results]
    assert sorted(seqs) == list(range(2, 502))  # no gaps, no duplicates
    assert not any(r.duplicate for r in results)
    assert await last_seq(store, GROUP) == 501
    stored = await store.messages_after(GROUP, 1, 1000)
    assert [m.seq for m in stored] == list(range(2, 502))
    by_cmid = {m.client_msg_id: m.seq for m in stored}
    assert by_cmid == {f"c{i}": results[i].message.seq for i in range(500)}
    assert all(m.body == {"text": f"m{m.client_msg_id[1:]}"} for m in stored if m.client_msg_id)

    assert jobs1 - jobs0 == 500
    assert 0 < batches1 - batches0 < jobs1 - jobs0  # several jobs per transaction


async def test_concurrent_appends_to_one_dm_start_at_1(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    results = await asyncio.gather(
        *(store.append_message(text(DM, "alice", f"c{i}")) for i in range(500))
    )
    assert sorted(r.message.seq for r in results) == list(range(1, 501))


async def test_concurrent_resends_store_once(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    results = await asyncio.gather(
        *(store.append_message(text(DM, "alice", "same")) for _ in range(50))
    )
    assert sum(not r.duplicate for r in results) == 1
    assert {r.message.seq for r in results} == {1}
    assert await last_seq(store, DM) == 1


async def test_messages_after_and_before_paging(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    for i in range(25):
        await store.append_message(text(DM, "alice", f"c{i}"))

    async def after(seq: int, limit: int) -> list[int]:
        return [m.seq for m in await store.messages_after(DM, seq, limit)]

    async def before(seq: int | None, limit: int) -> list[int]:
        return [m.seq for m in await store.messages_before(DM, seq, limit)]

    assert await after(0, 10) == list(range(1, 11))
    assert await after(10, 10) == list(range(11, 21))
    assert await after(20, 10) == list(range(21, 26))
    assert await after(25, 10) == []
    assert await after(0, 1000) == list(range(1, 26))

    assert await before(None, 10) == list(range(16, 26))  # newest, ascending
    assert await before(16, 10) == list(range(6, 16))
    assert await before(6, 10) == list(range(1, 6))
    assert await before(1, 10) == []
    assert await before(1000, 3) == [23, 24, 25]

    assert await store.messages_after("dm:carol:dave", 0, 10) == []
    assert await store.messages_before("dm:carol:dave", None, 10) == []


async def test_recall_erases_body_and_appends_notice(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    await store.append_message(text(DM, "alice", "c1", "secret"))
    await store.append_message(text(DM, "bob", "c2", "reply"))
    notice = NewMessage(DM, "alice", "d1", "recall", {"target_seq": 1}, T0 + 10)

    recall = await store.recall_message(DM, 1, notice)

    assert (recall.seq, recall.kind, recall.body) == (3, "recall", {"target_seq": 1})
    target = await store.get_message(DM, 1)
    assert target is not None
    assert target.recalled is True
    assert target.body == {}
    assert target.sender == "alice" and target.client_msg_id == "c1"
    untouched = await store.get_message(DM, 2)
    assert untouched is not None and untouched.body == {"text": "reply"}
    assert not untouched.recalled
    assert await last_seq(store, DM) == 3
    assert [m.seq for m in await store.messages_after(DM, 0, 10)] == [1, 2, 3]
    # a resend of the recalled message's id still answers "duplicate", not a new message
    again = await store.append_message(text(DM, "alice", "c1", "secret"))
    assert again.duplicate is True and again.message.recalled is True


async def test_recall_of_missing_message_changes_nothing(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    await store.append_message(text(DM, "alice", "c1"))
    notice = NewMessage(DM, "alice", "d1", "recall", {"target_seq": 9}, T0)
    with pytest.raises(NoSuchMessage):
        await store.recall_message(DM, 9, notice)
    assert await last_seq(store, DM) == 1


# -- read cursors ------------------------------------------------------------------------
async def test_read_cursor_moves_forward_only_and_clamps(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    for i in range(5):
        await store.append_message(text(DM, "alice", f"c{i}"))
    assert await store.set_read_cursor(DM, "bob", 3) == 3
    assert await store.set_read_cursor(DM, "bob", 1) == 3  # never backwards
    assert await store.set_read_cursor(DM, "bob", 0) == 3
    assert await read_seq(store, DM, "bob") == 3
    assert await store.set_read_cursor(DM, "bob", 99) == 5  # clamped to last_seq
    assert await read_seq(store, DM, "bob") == 5
    await store.append_message(text(DM, "alice", "c5"))
    assert await store.set_read_cursor(DM, "bob", 99) == 6


async def test_read_cursor_of_non_member(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    with pytest.raises(NotMember):
        await store.set_read_cursor(DM, "carol", 1)


async def test_sender_cursor_advances_on_send(store: ContractStore) -> None:
    await store.ensure_dm(DM, "alice", "bob", T0)
    await store.append_message(text(DM, "alice", "c1"))
    await store.append_message(text(DM, "alice", "c2"))
    assert await read_seq(store, DM, "alice") == 2
    assert await read_seq(store, DM, "bob") == 0
    await store.append_message(text(DM, "bob", "b1"))
    assert await read_seq(store, DM, "bob") == 3
    assert await read_seq(store, DM, "alice") == 2
    states = {s.conv: s for s in await store.conversations_of("bob")}
    assert (states[DM].read_seq, states[DM].last_seq) == (3, 3)


async def test_group_notice_moves_actor_cursor(store: ContractStore) -> None:
    await make_group(store)
    assert await read_seq(store, GROUP, "alice") == 1
    assert await read_seq(store, GROUP, "bob") == 0


# -- group changes -----------------------------------------------------------------------
async def test_change_group_add_remove_rename_roles(store: ContractStore) -> None:
    await make_group(store)

    added = await store.change_group(
        GROUP,
        MembershipChange(add=(("dave", ROLE_MEMBER),)),
        system(GROUP, "alice", "member_added", users=["dave"]),
        max_members=10,
    )
    assert (added.seq, added.kind) == (2, "system")
    assert await store.member_role(GROUP, "dave") == ROLE_MEMBER

    removed = await store.change_group(
        GROUP,
        MembershipChange(remove=("carol",)),
        system(GROUP, "alice", "member_removed", users=["carol"]),
        max_members=10,
    )
    assert removed.seq == 3
    assert await store.member_role(GROUP, "carol") is None

    renamed = await store.change_group(
        GROUP,
        MembershipChange(rename="New name"),
        system(GROUP, "alice", "group_renamed", name="New name"),
        max_members=10,
    )
    assert renamed.seq == 4
    conv = await store.get_conversation(GROUP)
    assert conv is not None and conv.name == "New name"

    promoted = await store.change_group(
        GROUP,
        MembershipChange(set_roles=(("bob", ROLE_ADMIN),)),
        system(GROUP, "alice", "role_changed", users=["bob"], role=ROLE_ADMIN),
        max_members=10,
    )
    assert promoted.seq == 5
    roles = {m.user: m.role for m in await store.members(GROUP)}
    assert roles == {"alice": ROLE_OWNER, "bob": ROLE_ADMIN, "dave": ROLE_MEMBER}
    events = [m.body["event"] for m in await store.messages_after(GROUP, 0, 10)]
    assert events == [
        "group_created",
        "member_added",
        "member_removed",
        "group_renamed",
        "role_changed",
    ]


async def test_change_group_combined_change_is_one_step(store: ContractStore) -> None:
    await make_group(store)
    notice = await store.change_group(
        GROUP,
        MembershipChange(
            add=(("dave", ROLE_ADMIN),),
            remove=("carol",),
            set_roles=(("bob", ROLE_ADMIN),),
            rename="Both",
        ),
        system(GROUP, "alice", "member_added"),
        max_members=3,  # 3 - carol + dave = 3: exactly at the limit
    )
    assert notice.seq == 2
    roles = {m.user: m.role for m in await store.members(GROUP)}
    assert roles == {"alice": ROLE_OWNER, "bob": ROLE_ADMIN, "dave": ROLE_ADMIN}
    conv = await store.get_conversation(GROUP)
    assert conv is not None and (conv.name, conv.last_seq) == ("Both", 2)


async def test_too_many_members_leaves_nothing_applied(store: ContractStore) -> None:
    await make_group(store)  # alice, bob, carol
    await store.upsert_users([("erin", "E"), ("frank", "F")], T0)
    before_members = await store.members(GROUP)
    before_seq = await last_seq(store, GROUP)

    with pytest.raises(TooManyMembers):
        await store.change_group(
            GROUP,
            MembershipChange(
                add=(("dave", ROLE_MEMBER), ("erin", ROLE_MEMBER), ("frank", ROLE_MEMBER)),
                remove=("carol",),
                set_roles=(("bob", ROLE_ADMIN),),
                rename="Should not stick",
            ),
            system(GROUP, "alice", "member_added"),
            max_members=4,  # 3 - 1 + 3 = 5 > 4
        )

    assert await store.members(GROUP) == before_members
    assert len(before_members) == 3
    assert await last_seq(store, GROUP) == before_seq
    conv = await store.get_conversation(GROUP)
    assert conv is not None and conv.name == "Office"
    assert [m.seq for m in await store.messages_after(GROUP, 0, 10)] == [1]
    # the store is still healthy: the next change gets the next seq
    ok = await store.change_group(
        GROUP,
        MembershipChange(add=(("dave", ROLE_MEMBER),)),
        system(GROUP, "alice", "member_added"),
        max_members=4,
    )
    assert ok.seq == before_seq + 1


# -- files -------------------------------------------------------------------------------
async def test_files_record_get_and_visibility(store: ContractStore) -> None:
    meta = FileMeta(FILE_ID, 1234, "application/pdf", T0)
    await store.record_file(meta, "alice")
    assert await store.get_file(FILE_ID) == meta
    assert await store.get_file("0" * 64) is None

    assert await store.file_visible_to(FILE_ID, "alice") is True  # uploader
    assert await store.file_visible_to(FILE_ID, "bob") is False  # not sent anywhere yet
    assert await store.file_visible_to("0" * 64, "alice") is False

    await make_group(store)  # alice, bob, carol
    body = {"file": {"id": FILE_ID, "name": "r.pdf", "size": 1234, "mime": "application/pdf"}}
    await store.append_message(NewMessage(GROUP, "alice", "d1", "file", body, T0, "f1"))

    assert await store.file_visible_to(FILE_ID, "bob") is True  # member where it was sent
    assert await store.file_visible_to(FILE_ID, "carol") is True
    assert await store.file_visible_to(FILE_ID, "dave") is False  # stranger

    await store.change_group(
        GROUP,
        MembershipChange(remove=("carol",)),
        system(GROUP, "alice", "member_removed"),
        max_members=10,
    )
    assert await store.file_visible_to(FILE_ID, "carol") is False  # no longer a member


async def test_record_same_file_twice(store: ContractStore) -> None:
    meta = FileMeta(FILE_ID, 10, "text/plain", T0)
    await store.record_file(meta, "alice")
    await store.record_file(FileMeta(FILE_ID, 10, "text/plain", T0 + 1), "bob")
    assert await store.get_file(FILE_ID) == meta  # content-addressed: first record wins
    assert await store.file_visible_to(FILE_ID, "alice") is True
    assert await store.file_visible_to(FILE_ID, "bob") is True  # also uploaded it
    assert await store.file_visible_to(FILE_ID, "carol") is False


async def test_append_with_create_dm_creates_the_conversation_atomically(
    store: ContractStore,
) -> None:
    r = await store.append_message(text(DM, "alice", "first"), create_dm=("alice", "bob"))
    assert (r.duplicate, r.message.seq) == (False, 1)
    conv = await store.get_conversation(DM)
    assert conv is not None and conv.kind == "dm" and conv.last_seq == 1
    assert [m.user for m in await store.members(DM)] == ["alice", "bob"]
    # A resend aimed at another peer returns the original and creates nothing.
    other = "dm:alice:carol"
    again = await store.append_message(text(other, "alice", "first"), create_dm=("alice", "carol"))
    assert again.duplicate is True and again.message.conv == DM
    assert await store.get_conversation(other) is None
