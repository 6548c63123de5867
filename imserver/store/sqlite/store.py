"""The embedded store: one SQLite file in WAL mode.

Writes go through one writer thread that group-commits; reads through a
reader thread on its own connection. Every public method is one job, so each
is atomic: the job runs inside the writer's transaction (in a savepoint).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

from imserver.store.group_commit import CommitObserver
from imserver.store.membership import (
    MembershipSql,
    check_member_limit,
    group_members,
    membership_writes,
)
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
    message_from_row,
    stored_message,
)
from imserver.store.sqlite.apps import SqliteAppsMixin
from imserver.store.sqlite.audit import SqliteAuditLog, create_schema
from imserver.store.sqlite.cards import SqliteCardsMixin
from imserver.store.sqlite.dashboard import SqliteDashboardMixin
from imserver.store.sqlite.dashboard_logouts import SqliteDashboardLogoutsMixin
from imserver.store.sqlite.deadlines import SqliteDeadlinesMixin
from imserver.store.sqlite.directory import SqliteDirectoryMixin
from imserver.store.sqlite.file_check import check_store_file, create_store_file
from imserver.store.sqlite.governance import SqliteGovernanceMixin
from imserver.store.sqlite.identity import SqliteIdentityMixin
from imserver.store.sqlite.in_list import select_in
from imserver.store.sqlite.jobs import T
from imserver.store.sqlite.outbox import SqliteOutboxMixin
from imserver.store.sqlite.rotation import SqliteRotationMixin
from imserver.store.sqlite.schema import migrate
from imserver.store.sqlite.templates import SqliteTemplatesMixin
from imserver.store.sqlite.worker import SqliteThread

log = logging.getLogger(__name__)

_CONV_SELECT = f"SELECT {CONV_COLUMNS} FROM conversations WHERE id = ?"
_ADD_MEMBER = "INSERT OR IGNORE INTO members (conv, user, role, read_seq) VALUES (?, ?, ?, 0)"
_MEMBERSHIP_SQL = MembershipSql(
    archive="UPDATE conversations SET archived = 1 WHERE id = ?",
    rename="UPDATE conversations SET name = ? WHERE id = ?",
    remove="DELETE FROM members WHERE conv = ? AND user = ?",
    add=_ADD_MEMBER,
    set_role="UPDATE members SET role = ? WHERE conv = ? AND user = ?",
)


def _insert_message(conn: sqlite3.Connection, new: NewMessage) -> Message:
    """Assign the next seq and insert; the caller's transaction makes it atomic."""
    row = conn.execute(
        "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
        (new.conv,),
    ).fetchone()
    if row is None:
        raise no_such_conversation(new.conv)
    seq = int(row[0])
    conn.execute(
        f"INSERT INTO messages ({MSG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
        (
            new.conv,
            seq,
            new.sender,
            new.device,
            new.kind,
            orjson.dumps(new.body),
            new.ts,
            new.client_msg_id,
        ),
    )
    # The sender has read what they sent (system notices and recalls included).
    conn.execute(
        "UPDATE members SET read_seq = max(read_seq, ?) WHERE conv = ? AND user = ?",
        (seq, new.conv, new.sender),
    )
    if new.ding_to:
        conn.executemany(
            "INSERT OR IGNORE INTO dings (conv, seq, user, sender, card_id, next_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(new.conv, seq, u, new.sender, new.card_id, new.ding_next_at) for u in new.ding_to],
        )
    if new.kind == "file":
        conn.execute(
            "INSERT OR IGNORE INTO file_refs (file, conv) VALUES (?, ?)",
            (new.body["file"]["id"], new.conv),
        )
    return stored_message(new, seq)


def _create_dm(conn: sqlite3.Connection, conv: str, parties: tuple[str, str], now: int) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO conversations (id, kind, name, owner, last_seq, created_at)"
        " VALUES (?, 'dm', '', NULL, 0, ?)",
        (conv, now),
    )
    conn.executemany(_ADD_MEMBER, [(conv, u, ROLE_MEMBER) for u in parties])


class SqliteStore(
    SqliteAppsMixin,
    SqliteCardsMixin,
    SqliteOutboxMixin,
    SqliteDeadlinesMixin,
    SqliteDirectoryMixin,
    SqliteRotationMixin,
    SqliteIdentityMixin,
    SqliteGovernanceMixin,
    SqliteTemplatesMixin,
    SqliteDashboardMixin,
    SqliteDashboardLogoutsMixin,
):
    """``Store`` on a local SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        group_commit_max: int = 512,
        audit_algorithm: str = "sha256",
        integrity_check: str = "quick",
    ) -> None:
        self._path = path
        self._synchronous = synchronous.upper()
        #: How thoroughly the file is checked before the writer opens it
        #: (``store.integrity_check``; imserver/store/sqlite/file_check.py).
        self._integrity_check = integrity_check
        self._writer = SqliteThread(
            "sqlite-writer", self._connect_writer, batch=group_commit_max, write=True
        )
        self._reader = SqliteThread("sqlite-reader", self._connect_reader, batch=64, write=False)
        self._open = False
        self._insert = _insert_message
        #: The hash-chained audit log lives in the same database, so a change
        #: and its audit record commit (or roll back) together.
        self.audit = SqliteAuditLog(self._write, self._read, algorithm=audit_algorithm)

    # -- lifecycle -----------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        """Create the file if missing; refuse it if it is not a sound store; then migrate.

        The checks run before the first write, so a refused file is left
        exactly as found — the operator's evidence and restore source.
        """
        if not self._path.exists():
            create_store_file(self._path, self._prepare)
            log.info("sqlite store %s: created a new store", self._path)
        report = check_store_file(self._path, check=self._integrity_check)
        log.info(
            "sqlite store %s: schema version %d, %s integrity check: %s",
            self._path,
            report.schema_version,
            report.check,
            report.integrity,
        )
        conn = self._connect()
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        applied = migrate(conn)
        create_schema(conn)  # the audit table and its append-only triggers
        if applied:
            log.info("sqlite store %s: applied schema migrations %s", self._path, applied)

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        return conn

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._writer.start()  # migrates before any reader looks at the schema
        self._reader.start()
        self._open = True

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._reader.stop()
        self._writer.stop()

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(transactions committed, jobs in them) — group-commit effectiveness."""
        return self._writer.batches, self._writer.jobs

    def observe_commits(self, observer: CommitObserver) -> None:
        """Tell ``observer`` of every committed write batch (the server's metrics)."""
        self._writer.on_commit = observer

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writer.run(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._reader.run(fn)

    # -- users ---------------------------------------------------------------
    async def upsert_users(self, users: Iterable[tuple[str, str]], now: int) -> int:
        rows = [(uid, name, now) for uid, name in users]

        def job(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                rows,
            )
            return len(rows)

        return await self._write(job)

    async def existing_users(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)  # read here, not in the store's thread

        def job(conn: sqlite3.Connection) -> set[str]:
            sql = "SELECT id FROM users WHERE id IN ({marks}) AND disabled = 0"
            return {r[0] for r in select_in(conn, sql, ids)}

        return await self._read(job)

    # -- conversations -------------------------------------------------------
    async def get_conversation(self, conv: str) -> Conversation | None:
        def job(conn: sqlite3.Connection) -> Conversation | None:
            row = conn.execute(
                _CONV_SELECT,
                (conv,),
            ).fetchone()
            return None if row is None else conversation_from_row(row)

        return await self._read(job)

    async def ensure_dm(self, conv: str, a: str, b: str, now: int) -> Conversation:
        def job(conn: sqlite3.Connection) -> Conversation:
            _create_dm(conn, conv, (a, b), now)
            return conversation_from_row(conn.execute(_CONV_SELECT, (conv,)).fetchone())

        return await self._write(job)

    async def create_group(
        self, conv: str, name: str, owner: str, members: Iterable[str], notice: NewMessage
    ) -> Message:
        rows = [(conv, user, role) for user, role in group_members(owner, members)]

        def job(conn: sqlite3.Connection) -> Message:
            conn.execute(
                "INSERT INTO conversations (id, kind, name, owner, last_seq, created_at)"
                " VALUES (?, 'group', ?, ?, 0, ?)",
                (conv, name, owner, notice.ts),
            )
            conn.executemany(
                "INSERT INTO members (conv, user, role, read_seq) VALUES (?, ?, ?, 0)", rows
            )
            return _insert_message(conn, notice)

        return await self._write(job)

    async def change_group(
        self, conv: str, change: MembershipChange, notice: NewMessage, max_members: int
    ) -> Message:
        def job(conn: sqlite3.Connection) -> Message:
            for statement, rows in membership_writes(conv, change, _MEMBERSHIP_SQL):
                conn.executemany(statement, rows)
            if change.add:
                (count,) = conn.execute(
                    "SELECT count(*) FROM members WHERE conv = ?", (conv,)
                ).fetchone()
                check_member_limit(count, max_members)
            return _insert_message(conn, notice)

        return await self._write(job)

    async def members(self, conv: str) -> list[Member]:
        def job(conn: sqlite3.Connection) -> list[Member]:
            return [
                Member(*row)
                for row in conn.execute(
                    "SELECT user, role, read_seq FROM members WHERE conv = ? ORDER BY user", (conv,)
                )
            ]

        return await self._read(job)

    async def member_role(self, conv: str, user: str) -> str | None:
        def job(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT role FROM members WHERE conv = ? AND user = ?", (conv, user)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(job)

    async def conversations_of(self, user: str) -> list[ConvState]:
        def job(conn: sqlite3.Connection) -> list[ConvState]:
            rows = conn.execute(
                "SELECT c.id, c.kind, c.name, c.last_seq, m.read_seq, m.role,"
                " (SELECT count(*) FROM members mm WHERE mm.conv = c.id)"
                " FROM members m JOIN conversations c ON c.id = m.conv"
                " WHERE m.user = ? ORDER BY c.id",
                (user,),
            )
            return [ConvState(*row) for row in rows]

        return await self._read(job)

    # -- messages ------------------------------------------------------------
    async def append_message(
        self, new: NewMessage, create_dm: tuple[str, str] | None = None
    ) -> AppendResult:
        def job(conn: sqlite3.Connection) -> AppendResult:
            if new.client_msg_id is not None:
                row = conn.execute(
                    f"SELECT {MSG_COLUMNS} FROM messages WHERE sender = ? AND client_msg_id = ?",
                    (new.sender, new.client_msg_id),
                ).fetchone()
                if row is not None:
                    return AppendResult(message_from_row(row), duplicate=True)
            if create_dm is not None:
                _create_dm(conn, new.conv, create_dm, new.ts)
            if (
                conn.execute(
                    "SELECT 1 FROM members WHERE conv = ? AND user = ?", (new.conv, new.sender)
                ).fetchone()
                is None
            ):
                raise not_member(new.conv)
            return AppendResult(_insert_message(conn, new), duplicate=False)

        return await self._write(job)

    async def messages_after(self, conv: str, after_seq: int, limit: int) -> list[Message]:
        def job(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(
                f"SELECT {MSG_COLUMNS} FROM messages WHERE conv = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (conv, after_seq, limit),
            )
            return [message_from_row(r) for r in rows]

        return await self._read(job)

    async def messages_before(self, conv: str, before_seq: int | None, limit: int) -> list[Message]:
        bound = before_seq if before_seq is not None else 2**62

        def job(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(
                f"SELECT {MSG_COLUMNS} FROM messages WHERE conv = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (conv, bound, limit),
            ).fetchall()
            return [message_from_row(r) for r in reversed(rows)]

        return await self._read(job)

    async def get_message(self, conv: str, seq: int) -> Message | None:
        def job(conn: sqlite3.Connection) -> Message | None:
            row = conn.execute(
                f"SELECT {MSG_COLUMNS} FROM messages WHERE conv = ? AND seq = ?", (conv, seq)
            ).fetchone()
            return None if row is None else message_from_row(row)

        return await self._read(job)

    async def recall_message(self, conv: str, seq: int, notice: NewMessage) -> Message:
        def job(conn: sqlite3.Connection) -> Message:
            cur = conn.execute(
                "UPDATE messages SET body = ?, recalled = 1 WHERE conv = ? AND seq = ?",
                (b"{}", conv, seq),
            )
            if cur.rowcount != 1:
                raise no_such_message(conv, seq)
            conn.execute(
                "DELETE FROM file_refs WHERE conv = ? AND file NOT IN ("
                "SELECT json_extract(body, '$.file.id') FROM messages"
                " WHERE conv = ? AND kind = 'file' AND recalled = 0)",
                (conv, conv),
            )
            return _insert_message(conn, notice)

        return await self._write(job)

    # -- read cursors --------------------------------------------------------
    async def set_read_cursor(self, conv: str, user: str, seq: int) -> int:
        return (await self.move_read_cursor(conv, user, seq)).seq

    async def move_read_cursor(self, conv: str, user: str, seq: int) -> ReadCursor:
        def job(conn: sqlite3.Connection) -> ReadCursor:
            before = conn.execute(
                "SELECT read_seq FROM members WHERE conv = ? AND user = ?", (conv, user)
            ).fetchone()
            if before is None:
                raise not_member(conv)
            row = conn.execute(
                "UPDATE members SET read_seq = max(read_seq,"
                " min(?, (SELECT last_seq FROM conversations WHERE id = ?)))"
                " WHERE conv = ? AND user = ? RETURNING read_seq",
                (seq, conv, conv, user),
            ).fetchone()
            return ReadCursor(int(row[0]), int(row[0]) > int(before[0]), int(before[0]))

        return await self._write(job)

    # -- files ---------------------------------------------------------------
    async def record_file(self, meta: FileMeta, uploader: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO files (id, size, mime, created_at) VALUES (?, ?, ?, ?)",
                (meta.id, meta.size, meta.mime, meta.created_at),
            )
            conn.execute(
                "INSERT OR IGNORE INTO file_uploaders (file, user) VALUES (?, ?)",
                (meta.id, uploader),
            )

        await self._write(job)

    async def get_file(self, file_id: str) -> FileMeta | None:
        def job(conn: sqlite3.Connection) -> FileMeta | None:
            row = conn.execute(
                "SELECT id, size, mime, created_at FROM files WHERE id = ?", (file_id,)
            ).fetchone()
            return None if row is None else FileMeta(*row)

        return await self._read(job)

    async def file_visible_to(self, file_id: str, user: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM file_uploaders WHERE file = ? AND user = ?"
                " UNION ALL SELECT 1 FROM file_refs r JOIN members m ON m.conv = r.conv"
                " WHERE r.file = ? AND m.user = ? LIMIT 1",
                (file_id, user, file_id, user),
            ).fetchone()
            return row is not None

        return await self._read(job)
