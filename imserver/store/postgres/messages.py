"""PostgreSQL side of ``Store``: users, conversations, messages, read cursors, files.

Several nodes may write one conversation at once. ``UPDATE conversations SET
last_seq = last_seq + 1 … RETURNING`` takes that conversation's row lock, so
their appends are serialised by the database and seqs stay gapless; the
lock is held until the writer's batch commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import asyncpg

from imserver.store.membership import MembershipSql, check_member_limit, membership_writes
from imserver.store.postgres.jobs import PgConn, PgJob
from imserver.store.records import (
    ROLE_MEMBER,
    ROLE_OWNER,
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
    """Assign the next seq and insert; the caller's transaction makes it atomic."""
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
    await conn.execute(
        'UPDATE members SET read_seq = greatest(read_seq, $1) WHERE conv = $2 AND "user" = $3',
        seq,
        new.conv,
        new.sender,
    )
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
    return Message(
        new.conv, seq, new.sender, new.device, new.kind, new.body, new.ts, new.client_msg_id
    )


async def create_dm(conn: PgConn, conv: str, parties: tuple[str, str], now: int) -> None:
    await conn.execute(
        "INSERT INTO conversations (id, kind, name, owner, last_seq, created_at)"
        " VALUES ($1, 'dm', '', NULL, 0, $2) ON CONFLICT DO NOTHING",
        conv,
        now,
    )
    await conn.executemany(_ADD_MEMBER, [(conv, u, ROLE_MEMBER) for u in parties])


async def _append(
    conn: PgConn, new: NewMessage, dm_parties: tuple[str, str] | None
) -> AppendResult:
    if new.client_msg_id is not None:
        row = await conn.fetchrow(_BY_CLIENT_MSG_ID, new.sender, new.client_msg_id)
        if row is not None:
            return AppendResult(message_from_row(row), duplicate=True)
    if dm_parties is not None:
        await create_dm(conn, new.conv, dm_parties, new.ts)
    is_member = await conn.fetchval(
        'SELECT 1 FROM members WHERE conv = $1 AND "user" = $2', new.conv, new.sender
    )
    if is_member is None:
        raise not_member(new.conv)
    try:
        async with conn.transaction():  # a savepoint: a lost race undoes only the insert
            return AppendResult(await insert_message(conn, new), duplicate=False)
    except asyncpg.UniqueViolationError as e:
        if e.constraint_name != IDEMPOTENCY_INDEX:
            raise
    # Another node stored the same (sender, client_msg_id) between our lookup
    # and our insert; its transaction has committed, so it is visible now.
    row = await conn.fetchrow(_BY_CLIENT_MSG_ID, new.sender, new.client_msg_id)
    assert row is not None
    return AppendResult(message_from_row(row), duplicate=True)


async def _apply_membership(
    conn: PgConn, conv: str, change: MembershipChange, max_members: int
) -> None:
    for statement, rows in membership_writes(conv, change, _MEMBERSHIP_SQL):
        await conn.executemany(statement, rows)
    if change.add:
        count = await conn.fetchval("SELECT count(*) FROM members WHERE conv = $1", conv)
        check_member_limit(count, max_members)


class PgMessagesMixin:
    """Users, conversations, messages, cursors and files; needs ``_write``/``_read``."""

    _write: Callable[[PgJob], Awaitable[Any]]
    _read: Callable[[PgJob], Awaitable[Any]]

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

        result: int = await self._write(job)
        return result

    async def existing_users(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))

        async def job(conn: PgConn) -> set[str]:
            rows = await conn.fetch(
                "SELECT id FROM users WHERE id = ANY($1::text[]) AND NOT disabled", wanted
            )
            return {r[0] for r in rows}

        result: set[str] = await self._read(job)
        return result

    # -- conversations -------------------------------------------------------
    async def get_conversation(self, conv: str) -> Conversation | None:
        async def job(conn: PgConn) -> Conversation | None:
            row = await conn.fetchrow(_CONV_SELECT, conv)
            return None if row is None else conversation_from_row(row)

        result: Conversation | None = await self._read(job)
        return result

    async def ensure_dm(self, conv: str, a: str, b: str, now: int) -> Conversation:
        async def job(conn: PgConn) -> Conversation:
            await create_dm(conn, conv, (a, b), now)
            row = await conn.fetchrow(_CONV_SELECT, conv)
            assert row is not None  # just inserted, or already there
            return conversation_from_row(row)

        result: Conversation = await self._write(job)
        return result

    async def create_group(
        self, conv: str, name: str, owner: str, members: Iterable[str], notice: NewMessage
    ) -> Message:
        others = [m for m in dict.fromkeys(members) if m != owner]

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
                'INSERT INTO members (conv, "user", role, read_seq) VALUES ($1, $2, $3, 0)',
                [(conv, owner, ROLE_OWNER), *((conv, m, ROLE_MEMBER) for m in others)],
            )
            return await insert_message(conn, notice)

        result: Message = await self._write(job)
        return result

    async def change_group(
        self, conv: str, change: MembershipChange, notice: NewMessage, max_members: int
    ) -> Message:
        async def job(conn: PgConn) -> Message:
            await _apply_membership(conn, conv, change, max_members)
            return await insert_message(conn, notice)

        result: Message = await self._write(job)
        return result

    async def members(self, conv: str) -> list[Member]:
        async def job(conn: PgConn) -> list[Member]:
            rows = await conn.fetch(
                'SELECT "user", role, read_seq FROM members WHERE conv = $1 ORDER BY "user"', conv
            )
            return [Member(*row) for row in rows]

        result: list[Member] = await self._read(job)
        return result

    async def member_role(self, conv: str, user: str) -> str | None:
        async def job(conn: PgConn) -> str | None:
            role = await conn.fetchval(
                'SELECT role FROM members WHERE conv = $1 AND "user" = $2', conv, user
            )
            return None if role is None else str(role)

        result: str | None = await self._read(job)
        return result

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

        result: list[ConvState] = await self._read(job)
        return result

    # -- messages ------------------------------------------------------------
    async def append_message(
        self, new: NewMessage, create_dm: tuple[str, str] | None = None
    ) -> AppendResult:
        async def job(conn: PgConn) -> AppendResult:
            return await _append(conn, new, create_dm)

        result: AppendResult = await self._write(job)
        return result

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

        result: list[Message] = await self._read(job)
        return result

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

        result: list[Message] = await self._read(job)
        return result

    async def get_message(self, conv: str, seq: int) -> Message | None:
        async def job(conn: PgConn) -> Message | None:
            row = await conn.fetchrow(
                f"SELECT {MSG_COLUMNS} FROM messages WHERE conv = $1 AND seq = $2", conv, seq
            )
            return None if row is None else message_from_row(row)

        result: Message | None = await self._read(job)
        return result

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

        result: Message = await self._write(job)
        return result

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
            return ReadCursor(int(cursor), int(cursor) > int(before))

        result: ReadCursor = await self._write(job)
        return result

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

        result: FileMeta | None = await self._read(job)
        return result

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

        result: bool = await self._read(job)
        return result
