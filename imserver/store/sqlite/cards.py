"""SQLite side of the ``CardStore`` interface: cards, their holders and todo, notices.

Apps are ``apps.py``; the callback outbox is ``outbox.py``.

A mixin of :class:`imserver.store.sqlite.SqliteStore`; it shares its writer
thread, so a card's new version, its todo rows, its fan-out messages and its
callback are committed in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

import orjson

from imserver.store.card_docs import CardDocSealing
from imserver.store.records import ROLE_MEMBER, CardChange, CardRecord, Message, NewCard, NewMessage
from imserver.store.rows import (
    BROADCAST_PREFIX,
    BROADCAST_RANGE,
    CARD_COLUMNS,
    created_card,
    qualified,
)
from imserver.store.sqlite.audit import SqliteAuditLog
from imserver.store.sqlite.in_list import select_in
from imserver.store.sqlite.jobs import SqliteJobs
from imserver.store.sqlite.outbox import insert_outbox


def _next_gseq(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'card_gseq' RETURNING value"
    ).fetchone()
    return int(row[0])


def _set_pending(
    conn: sqlite3.Connection, card_id: str, users: Iterable[str], due_at: int | None
) -> None:
    conn.execute("DELETE FROM card_pending WHERE card_id = ?", (card_id,))
    conn.executemany(
        "INSERT INTO card_pending (user, card_id, due_at) VALUES (?, ?, ?)",
        [(u, card_id, due_at) for u in users],
    )


def _set_timers(conn: sqlite3.Connection, card_id: str, timers: Iterable[tuple[str, int]]) -> None:
    conn.execute("DELETE FROM timers WHERE card_id = ? AND done = 0", (card_id,))
    conn.executemany(
        "INSERT INTO timers (card_id, kind, fire_at) VALUES (?, ?, ?)",
        [(card_id, kind, at) for kind, at in timers],
    )


def ensure_notice_conv(conn: sqlite3.Connection, conv: str, user: str, name: str, now: int) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO conversations (id, kind, name, owner, last_seq, created_at)"
        " VALUES (?, 'notice', ?, NULL, 0, ?)",
        (conv, name, now),
    )
    conn.execute(
        "INSERT OR IGNORE INTO members (conv, user, role, read_seq) VALUES (?, ?, ?, 0)",
        (conv, user, ROLE_MEMBER),
    )


def ensure_notice_convs(
    conn: sqlite3.Connection, convs: list[tuple[str, str, str]], now: int
) -> None:
    """``ensure_notice_conv`` for many ``(conv, user, name)`` at once.

    A broadcast conversation (``b:``) appears once per holder in ``convs``.
    Its id is named after its exact member set (``cards/recipients.py``), so
    when it already exists with that many members nothing is written: the
    next card to the same 1,000 people costs no member rows at all.
    """
    by_conv: dict[str, tuple[str, list[str]]] = {}
    for conv, user, name in convs:
        by_conv.setdefault(conv, (name, []))[1].append(user)
    rows: list[tuple[str, str, str]] = []
    for conv, (name, users) in by_conv.items():
        created = conn.execute(
            "INSERT OR IGNORE INTO conversations (id, kind, name, owner, last_seq, created_at)"
            " VALUES (?, 'notice', ?, NULL, 0, ?)",
            (conv, name, now),
        ).rowcount
        if not created and conv.startswith(BROADCAST_PREFIX):
            count = conn.execute("SELECT count(*) FROM members WHERE conv = ?", (conv,))
            (have,) = count.fetchone()
            if have == len(users):
                continue
        rows += [(conv, user, ROLE_MEMBER) for user in users]
    conn.executemany(
        "INSERT OR IGNORE INTO members (conv, user, role, read_seq) VALUES (?, ?, ?, 0)", rows
    )


class SqliteCardsMixin(CardDocSealing, SqliteJobs):
    """Card storage; needs ``_write``/``_read`` and ``_insert_message`` from the store."""

    _insert: Callable[[sqlite3.Connection, NewMessage], Message]
    audit: SqliteAuditLog

    # -- cards ---------------------------------------------------------------
    async def create_card(
        self, card: NewCard, messages: list[NewMessage], notice_convs: list[tuple[str, str, str]]
    ) -> tuple[CardRecord, list[Message], bool]:
        def job(conn: sqlite3.Connection) -> tuple[CardRecord, list[Message], bool]:
            row = conn.execute(
                f"SELECT {CARD_COLUMNS} FROM cards WHERE app_id = ? AND out_track_id = ?",
                (card.app_id, card.doc["out_track_id"]),
            ).fetchone()
            if row is not None:
                return self._card_record(row), [], True
            gseq = _next_gseq(conn)
            conn.execute(
                f"INSERT INTO cards ({CARD_COLUMNS}, audience)"
                " VALUES (?, ?, ?, 1, ?, ?, ?, 'none', ?, ?, ?)",
                (
                    card.id,
                    card.app_id,
                    card.doc["out_track_id"],
                    gseq,
                    orjson.dumps(self._seal_doc(card.id, card.doc)),
                    orjson.dumps(card.approval),
                    card.now,
                    card.now,
                    card.audience or None,
                ),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO card_holders (user, card_id) VALUES (?, ?)",
                [(u, card.id) for u in card.holders],
            )
            _set_pending(conn, card.id, card.pending, card.doc.get("due_at"))
            _set_timers(conn, card.id, card.timers)
            ensure_notice_convs(conn, notice_convs, card.now)
            stored = [self._insert(conn, m) for m in messages]
            return created_card(card, gseq), stored, False

        return await self._write(job)

    async def get_card(self, card_id: str) -> CardRecord | None:
        def job(conn: sqlite3.Connection) -> CardRecord | None:
            row = conn.execute(f"SELECT {CARD_COLUMNS} FROM cards WHERE id = ?", (card_id,))
            found = row.fetchone()
            return None if found is None else self._card_record(found)

        return await self._read(job)

    async def get_card_by_track(self, app_id: str, out_track_id: str) -> CardRecord | None:
        def job(conn: sqlite3.Connection) -> CardRecord | None:
            row = conn.execute(
                f"SELECT {CARD_COLUMNS} FROM cards WHERE app_id = ? AND out_track_id = ?",
                (app_id, out_track_id),
            ).fetchone()
            return None if row is None else self._card_record(row)

        return await self._read(job)

    async def cards_by_ids(self, ids: Iterable[str]) -> dict[str, CardRecord]:
        ids = list(ids)  # read here, not in the store's thread

        def job(conn: sqlite3.Connection) -> dict[str, CardRecord]:
            sql = f"SELECT {CARD_COLUMNS} FROM cards WHERE id IN ({{marks}})"
            return {row[0]: self._card_record(row) for row in select_in(conn, sql, ids)}

        return await self._read(job)

    async def save_card(self, change: CardChange) -> CardRecord | None:
        """Write a new version if the card is still at ``expected_version``; else None.

        The callback (if any) joins the outbox in the same transaction, so an
        accepted action can never lose its callback.
        """
        saved = await self.save_card_holders(change)
        return None if saved is None else saved[0]

    async def save_card_holders(
        self, change: CardChange
    ) -> tuple[CardRecord, list[Message]] | None:
        """``save_card`` plus ``change.new_holders`` (holder row, conversation, card message)."""

        def job(conn: sqlite3.Connection) -> tuple[CardRecord, list[Message]]:
            gseq = _next_gseq(conn)
            row = conn.execute(
                "UPDATE cards SET version = version + 1, gseq = ?, doc = ?, approval = ?,"
                " callback = ?, updated_at = ? WHERE id = ? AND version = ?"
                f" RETURNING {CARD_COLUMNS}",
                (
                    gseq,
                    orjson.dumps(self._seal_doc(change.card_id, change.doc)),
                    orjson.dumps(change.approval),
                    change.callback,
                    change.now,
                    change.card_id,
                    change.expected_version,
                ),
            ).fetchone()
            if row is None:
                raise _VersionMoved  # undo the gseq bump with the job's savepoint
            stored = []
            for h in change.new_holders:
                if conn.execute(
                    "INSERT OR IGNORE INTO card_holders (user, card_id) VALUES (?, ?)",
                    (h.user, change.card_id),
                ).rowcount:
                    conv, who, name = h.notice_conv
                    ensure_notice_conv(conn, conv, who, name, change.now)
                    stored.append(self._insert(conn, h.message))
            _set_pending(conn, change.card_id, change.pending, change.doc.get("due_at"))
            if change.timers is not None:
                _set_timers(conn, change.card_id, change.timers)
            if change.audit is not None:
                a = change.audit
                self.audit.append_in(conn, change.now, a.actor, a.action, a.target, a.details)
            if change.outbox is not None:
                o = change.outbox
                insert_outbox(conn, (o,), change.now)
            return self._card_record(row), stored

        try:
            return await self._write(job)
        except _VersionMoved:
            return None

    async def set_card_callback(
        self, card_id: str, state: str, expected_version: int
    ) -> CardRecord | None:
        """The delivery status only: same version, new ``gseq`` (see ``CardStore``)."""

        def job(conn: sqlite3.Connection) -> CardRecord:
            row = conn.execute(
                "UPDATE cards SET gseq = ?, callback = ? WHERE id = ? AND version = ?"
                f" RETURNING {CARD_COLUMNS}",
                (_next_gseq(conn), state, card_id, expected_version),
            ).fetchone()
            if row is None:
                raise _VersionMoved  # undo the gseq bump with the job's savepoint
            return self._card_record(row)

        try:
            return await self._write(job)
        except _VersionMoved:
            return None

    async def card_holders(self, card_id: str) -> list[str]:
        """Holders by a row of their own, and the members of the card's audience."""

        def job(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT user FROM card_holders WHERE card_id = ?1"
                " UNION SELECT m.user FROM cards c JOIN members m ON m.conv = c.audience"
                " WHERE c.id = ?1",
                (card_id,),
            )
            return [r[0] for r in rows]

        return await self._read(job)

    async def cards_changed_for(self, user: str, after_gseq: int, limit: int) -> list[CardRecord]:
        def job(conn: sqlite3.Connection) -> list[CardRecord]:
            rows = conn.execute(
                f"SELECT {qualified(CARD_COLUMNS, 'c')} FROM cards c WHERE c.id IN ("
                " SELECT h.card_id FROM card_holders h WHERE h.user = ?1"
                " UNION ALL SELECT a.id FROM members m CROSS JOIN cards a"
                f" ON a.audience = m.conv AND a.gseq > ?2 WHERE m.user = ?1 AND {BROADCAST_RANGE}"
                ") AND c.gseq > ?2 ORDER BY c.gseq LIMIT ?3",
                (user, after_gseq, limit),
            )
            return [self._card_record(r) for r in rows]

        return await self._read(job)

    async def todo_cards(self, user: str, limit: int) -> tuple[list[CardRecord], int]:
        def job(conn: sqlite3.Connection) -> tuple[list[CardRecord], int]:
            (total,) = conn.execute(
                "SELECT count(*) FROM card_pending WHERE user = ?", (user,)
            ).fetchone()
            rows = conn.execute(
                f"SELECT {qualified(CARD_COLUMNS, 'c')}"
                " FROM card_pending p JOIN cards c ON c.id = p.card_id WHERE p.user = ?"
                " ORDER BY p.due_at IS NULL, p.due_at, c.created_at LIMIT ?",
                (user, limit),
            )
            return [self._card_record(r) for r in rows], int(total)

        return await self._read(job)

    async def deliver_notice(
        self, messages: list[NewMessage], notice_convs: list[tuple[str, str, str]], now: int
    ) -> list[Message]:
        def job(conn: sqlite3.Connection) -> list[Message]:
            ensure_notice_convs(conn, notice_convs, now)
            return [self._insert(conn, m) for m in messages]

        return await self._write(job)


class _VersionMoved(Exception):
    """Raised inside a write job so its savepoint is rolled back."""
