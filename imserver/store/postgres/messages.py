"""PostgreSQL side of ``Store``: users, conversations, messages, read cursors, files.

Several nodes may write one conversation at once. ``UPDATE conversations SET
last_seq = last_seq + 1 … RETURNING`` takes that conversation's row lock, so
their appends are serialised by the database and seqs stay gapless; the
lock is held until the writer's batch commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import asyncpg

from imserver.store.membership import (
    MembershipSql,
    check_member_limit,
    group_members,
    membership_writes,
)
from imserver.store.postgres.jobs import PgConn, PgJobs, RetryJob
from imserver.store.records import (
    ROLE_MEMBER,
    AppendResult,
    Conversation,
    ConvState,
    FileMeta,
    Member,
    MembershipChange,
    Message,
    NewMessage,
    ReadCursor,
)
from imserver.store.refusals import (
    no_such_conversation,
    no_such_message,
    not_member,
)
from imserver.store.rows import (
    CONV_COLUMNS,
    MSG_COLUMNS,
    conversation_from_row,
    dump_json,
    message_from_row,
    stored_message,
)

IDEMPOTENCY_INDEX: Final = "messages_idempotency"
_CONV_SELECT: Final = f"SELECT {CONV_COLUMNS} FROM conversations WHERE id = $1"
_ADD_MEMBER: Final = (
    'INSERT INTO members (conv, "user", role, read_seq) VALUES ($1, $2, $3, 0)'
    " ON CONFLICT DO NOTHING"
)
_MEMBERSHIP_SQL: Final = MembershipSql(
    archive="UPDATE conversations SET archived = TRUE WHERE id = $1",
    rename="UPDATE conversations SET name = $1 WHERE id = $2",
    remove='DELETE FROM members WHERE conv = $1 AND "user" = $2',
    add=_ADD_MEMBER,
    set_role='UPDATE members SET role = $1 WHERE conv = $2 AND "user" = $3',
)
_BY_CLIENT_MSG_ID: Final = (
    f"SELECT {MSG_COLUMNS} FROM messages WHERE sender = $1 AND client_msg_id = $2"
)


async def insert_message(conn: PgConn, new: NewMessage) -> Message:
    """Assign the next seq and insert; the caller's transaction makes it atomic.

    For the messages that are not a member's plain send (group changes,
    recalls, notices); sends take :data:`_APPEND`.
    """
    seq = await conn.fetchval(
        "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        new.conv,
    )
    if seq is None:
        raise no_such_conversation(new.conv)
    await conn.execute(
        f"INSERT INTO messages ({MSG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, FALSE)",
        new.conv,
        seq,
        new.sender,
        new.device,
        new.kind,
        dump_json(new.body),
        new.ts,
        new.client_msg_id,
    )
    # The sender has read what they sent (system notices and recalls included).
    # An app (``app:<id>``; user ids have no colon) is no member: nothing to move.
    if ":" not in new.sender:
        await conn.execute(
            'UPDATE members SET read_seq = greatest(read_seq, $1) WHERE conv = $2 AND "user" = $3',
            seq,
            new.conv,
            new.sender,
        )
    await _append_extras(conn, new, seq)
    return stored_message(new, seq)


async def _append_extras(conn: PgConn, new: NewMessage, seq: int) -> None:
    """The rows only some messages have: DING recipients, a file's reference."""
    if new.ding_to:
        await conn.executemany(
            'INSERT INTO dings (conv, seq, "user", sender, card_id, next_at)'
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            [(new.conv, seq, u, new.sender, new.card_id, new.ding_next_at) for u in new.ding_to],
        )
    if new.kind == "file":
        await conn.execute(
            "INSERT INTO file_refs (file, conv) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            new.body["file"]["id"],
            new.conv,
        )


async def create_dm(conn: PgConn, conv: str, parties: tuple[str, str], now: int) -> None:
    await conn.execute(
        "INSERT INTO conversations (id, kind, name, owner, last_seq, created_at)"
        " VALUES ($1, 'dm', '', NULL, 0, $2) ON CONFLICT DO NOTHING",
        conv,
        now,
    )
    await conn.executemany(_ADD_MEMBER, [(conv, u, ROLE_MEMBER) for u in parties])


_APPEND: Final = f"""
WITH dup AS (
    SELECT 1 FROM messages WHERE sender = $1 AND client_msg_id = $2
), mem AS (
    SELECT 1 FROM members WHERE conv = $3 AND "user" = $1
), next AS (
    UPDATE conversations SET last_seq = last_seq + 1
    WHERE id = $3 AND NOT EXISTS (SELECT 1 FROM dup) AND EXISTS (SELECT 1 FROM mem)
    RETURNING last_seq
), ins AS (
    INSERT INTO messages ({MSG_COLUMNS})
    SELECT $3, last_seq, $1, $4::text, $5::text, $6::text, $7::bigint, $2, FALSE FROM next
    RETURNING seq
), mark AS (
    UPDATE members SET read_seq = greatest(read_seq, ins.seq)
    FROM ins WHERE conv = $3 AND "user" = $1
)
SELECT (SELECT seq FROM ins), EXISTS (SELECT 1 FROM dup), EXISTS (SELECT 1 FROM mem)
"""
"""The whole common append in one statement, so one round trip: the dedupe
lookup, the membership check, the next seq, the insert and the sender's read
cursor. Each step runs only if the one before allowed it; the answer says
which (``seq``, or duplicate / not a member). The conversation's row lock
serialises appenders across nodes, and ``last_seq + 1`` is re-read after
waiting for it (READ COMMITTED), so seqs stay gapless and unique."""


async def _append(
    conn: PgConn, new: NewMessage, dm_parties: tuple[str, str] | None
) -> AppendResult:
    if dm_parties is not None:
        # A resend aimed at a new peer must create nothing: look up first.
        if new.client_msg_id is not None:
            row = await conn.fetchrow(_BY_CLIENT_MSG_ID, new.sender, new.client_msg_id)
            if row is not None:
                return AppendResult(message_from_row(row), duplicate=True)
        await create_dm(conn, new.conv, dm_parties, new.ts)
    try:
        answer = await conn.fetchrow(
            _APPEND,
            new.sender,
            new.client_msg_id,
            new.conv,
            new.device,
            new.kind,
            dump_json(new.body),
            new.ts,
        )
    except asyncpg.UniqueViolationError as e:
        if e.constraint_name != IDEMPOTENCY_INDEX:
            raise
        # Another node stored the same (sender, client_msg_id) after our lookup;
        # its row is committed, so run again: the lookup then finds it.
        raise RetryJob(f"{new.sender}/{new.client_msg_id} stored meanwhile") from e
    assert answer is not None  # the final SELECT always yields one row
    seq, duplicate, is_member = answer
    if duplicate:
        row = await conn.fetchrow(_BY_CLIENT_MSG_ID, new.sender, new.client_msg_id)
        assert row is not None
        return AppendResult(message_from_row(row), duplicate=True)
    if not is_member:
        raise not_member(new.conv)
    if seq is None:
        raise no_such_conversation(new.conv)
    await _append_extras(conn, new, seq)
    return AppendResult(stored_message(new, seq), duplicate=False)


async def _apply_membership(
    conn: PgConn, conv: str, change: MembershipChange, max_members: int
) -> None:
    for statement, rows in membership_writes(conv, change, _MEMBERSHIP_SQL):
        await conn.executemany(statement, rows)
    if change.add:
        count = await conn.fetchval("SELECT count(*) FROM members WHERE conv = $1", conv)
        check_member_limit(count, max_members)


class PgMessagesMixin(PgJobs):
    """Users, conversations, messages, cursors and files; needs ``_write``/``_read``."""

    # -- users ---------------------------------------------------------------
    async def upsert_users(self, users: Iterable[tuple[str, str]], now: int) -> int:
        rows = [(uid, name, now) for uid, name in users]

        async def job(conn: PgConn) -> int:
            await conn.executemany(
                "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                rows,
            )
            return len(rows)

        return await self._write(job)

    async def existing_users(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))

        async def job(conn: PgConn) -> set[str]:
            rows = await conn.fetch(
                "SELECT id FROM users WHERE id = ANY($1::text[]) AND NOT disabled", wanted
            )
            return {r[0] for r in rows}

        return await self._read(job)

    # -- conversations -------------------------------------------------------
    async def get_conversation(self, conv: str) -> Conversation | None:
        async def job(conn: PgConn) -> Conversation | None:
            row = await conn.fetchrow(_CONV_SELECT, conv)
            return None if row is None else conversation_from_row(row)

        return await self._read(job)

    async def ensure_dm(self, conv: str, a: str, b: str, now: int) -> Conversation:
        async def job(conn: PgConn) -> Conversation:
            await create_dm(conn, conv, (a, b), now)
            row = await conn.fetchrow(_CONV_SELECT, conv)
            assert row is not None  # just inserted, or already there
            return conversation_from_row(row)

        return await self._write(job)

    async def create_group(
        self, conv: str, name: str, owner: str, members: Iterable[str], notice: NewMessage
    ) -> Message:
        rows = [(conv, user, role) for user, role in group_members(owner, members)]

        async def job(conn: PgConn) -> Message:
            await conn.execute(
                "INSERT INTO conversations (id, kind, name, owner, last_seq, created_at)"
                " VALUES ($1, 'group', $2, $3, 0, $4)",
                conv,
                name,
                owner,
                notice.ts,
            )
            await conn.executemany(
                'INSERT INTO members (conv, "user", role, read_seq) VALUES ($1, $2, $3, 0)', rows
            )
            return await insert_message(conn, notice)

        return await self._write(job)

    async def change_group(
        self, conv: str, change: MembershipChange, notice: NewMessage, max_members: int
    ) -> Message:
        async def job(conn: PgConn) -> Message:
            await _apply_membership(conn, conv, change, max_members)
            return await insert_message(conn, notice)

        return await self._write(job)

    async def members(self, conv: str) -> list[Member]:
        async def job(conn: PgConn) -> list[Member]:
            rows = await conn.fetch(
                'SELECT "user", role, read_seq FROM members WHERE conv = $1 ORDER BY "user"', conv
            )
            return [Member(*row) for row in rows]

        return await self._read(job)

    async def member_role(self, conv: str, user: str) -> str | None:
        async def job(conn: PgConn) -> str | None:
            role = await conn.fetchval(
                'SELECT role FROM members WHERE conv = $1 AND "user" = $2', conv, user
            )
            return None if role is None else str(role)

        return await self._read(job)

    async def conversations_of(self, user: str) -> list[ConvState]:
        async def job(conn: PgConn) -> list[ConvState]:
            rows = await conn.fetch(
                "SELECT c.id, c.kind, c.name, c.last_seq, m.read_seq, m.role,"
                " (SELECT count(*) FROM members mm WHERE mm.conv = c.id)"
                " FROM members m JOIN conversations c ON c.id = m.conv"
                ' WHERE m."user" = $1 ORDER BY c.id',
                user,
            )
            return [ConvState(*row) for row in rows]

        return await self._read(job)

    # -- messages ------------------------------------------------------------
    async def append_message(
        self, new: NewMessage, create_dm: tuple[str, str] | None = None
    ) -> AppendResult:
        async def job(conn: PgConn) -> AppendResult:
            return await _append(conn, new, create_dm)

        return await self._write(job)

    async def messages_after(self, conv: str, after_seq: int, limit: int) -> list[Message]:
        async def job(conn: PgConn) -> list[Message]:
            rows = await conn.fetch(
                f"SELECT {MSG_COLUMNS} FROM messages WHERE conv = $1 AND seq > $2"
                " ORDER BY seq LIMIT $3",
                conv,
                after_seq,
                limit,
            )
            return [message_from_row(r) for r in rows]

        return await self._read(job)

    async def messages_before(self, conv: str, before_seq: int | None, limit: int) -> list[Message]:
        bound = before_seq if before_seq is not None else 2**62

        async def job(conn: PgConn) -> list[Message]:
            rows = await conn.fetch(
                f"SELECT {MSG_COLUMNS} FROM messages WHERE conv = $1 AND seq < $2"
                " ORDER BY seq DESC LIMIT $3",
                conv,
                bound,
                limit,
            )
            return [message_from_row(r) for r in reversed(rows)]

        return await self._read(job)

    async def get_message(self, conv: str, seq: int) -> Message | None:
        async def job(conn: PgConn) -> Message | None:
            row = await conn.fetchrow(
                f"SELECT {MSG_COLUMNS} FROM messages WHERE conv = $1 AND seq = $2", conv, seq
            )
            return None if row is None else message_from_row(row)

        return await self._read(job)

    async def recall_message(self, conv: str, seq: int, notice: NewMessage) -> Message:
        async def job(conn: PgConn) -> Message:
            status = await conn.execute(
                "UPDATE messages SET body = '{}', recalled = TRUE WHERE conv = $1 AND seq = $2",
                conv,
                seq,
            )
            if status != "UPDATE 1":
                raise no_such_message(conv, seq)
            await conn.execute(
                "DELETE FROM file_refs WHERE conv = $1 AND file NOT IN ("
                "SELECT body::jsonb -> 'file' ->> 'id' FROM messages"
                " WHERE conv = $1 AND kind = 'file' AND NOT recalled)",
                conv,
            )
            return await insert_message(conn, notice)

        return await self._write(job)

    # -- read cursors --------------------------------------------------------
    async def set_read_cursor(self, conv: str, user: str, seq: int) -> int:
        return (await self.move_read_cursor(conv, user, seq)).seq

    async def move_read_cursor(self, conv: str, user: str, seq: int) -> ReadCursor:
        """Move the cursor forward; ``moved`` is decided under the member row's lock.

        So of two devices (on any nodes) reading the same message at once,
        exactly one sees it move.
        """

        async def job(conn: PgConn) -> ReadCursor:
            before = await conn.fetchval(
                'SELECT read_seq FROM members WHERE conv = $1 AND "user" = $2 FOR UPDATE',
                conv,
                user,
            )
            if before is None:
                raise not_member(conv)
            cursor = await conn.fetchval(
                "UPDATE members SET read_seq = greatest(read_seq,"
                " least($1, (SELECT last_seq FROM conversations WHERE id = $2)))"
                ' WHERE conv = $2 AND "user" = $3 RETURNING read_seq',
                seq,
                conv,
                user,
            )
            return ReadCursor(int(cursor), int(cursor) > int(before), int(before))

        return await self._write(job)

    # -- files ---------------------------------------------------------------
    async def record_file(self, meta: FileMeta, uploader: str) -> None:
        async def job(conn: PgConn) -> None:
            await conn.execute(
                "INSERT INTO files (id, size, mime, created_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING",
                meta.id,
                meta.size,
                meta.mime,
                meta.created_at,
            )
            await conn.execute(
                'INSERT INTO file_uploaders (file, "user") VALUES ($1, $2) ON CONFLICT DO NOTHING',
                meta.id,
                uploader,
            )

        await self._write(job)

    async def get_file(self, file_id: str) -> FileMeta | None:
        async def job(conn: PgConn) -> FileMeta | None:
            row = await conn.fetchrow(
                "SELECT id, size, mime, created_at FROM files WHERE id = $1", file_id
            )
            return None if row is None else FileMeta(*row)

        return await self._read(job)

    async def file_visible_to(self, file_id: str, user: str) -> bool:
        async def job(conn: PgConn) -> bool:
            found = await conn.fetchval(
                'SELECT 1 FROM file_uploaders WHERE file = $1 AND "user" = $2'
                " UNION ALL SELECT 1 FROM file_refs r JOIN members m ON m.conv = r.conv"
                ' WHERE r.file = $1 AND m."user" = $2 LIMIT 1',
                file_id,
                user,
            )
            return found is not None

        return await self._read(job)
