"""PostgreSQL side of ``CardStore``: cards, their holders and todo rows, notices.

Apps are ``apps.py``; the callback outbox (claims, leases) is ``outbox.py``.

Across nodes: ``save_card`` is an ``UPDATE … WHERE version = $n``; a second
node's update of the same card waits for the first to commit, re-reads the
row and finds the version moved, so exactly one of N concurrent approvers
wins. ``claim_callbacks`` takes due rows ``FOR UPDATE SKIP LOCKED`` and
leases them (``lease_until``): two nodes never hold one callback, and a dead
node's lease simply runs out and the row is claimable again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Final

from imserver.store.card_docs import CardDocSealing
from imserver.store.postgres.audit import PostgresAuditLog
from imserver.store.postgres.jobs import PgConn, PgJobs
from imserver.store.postgres.outbox import insert_outbox
from imserver.store.records import ROLE_MEMBER, CardChange, CardRecord, Message, NewCard, NewMessage
from imserver.store.rows import (
    BROADCAST_PREFIX,
    BROADCAST_RANGE,
    CARD_COLUMNS,
    created_card,
    dump_json,
    qualified,
)

_CARD_BY_TRACK: Final = f"SELECT {CARD_COLUMNS} FROM cards WHERE app_id = $1 AND out_track_id = $2"


async def next_gseq(conn: PgConn) -> int:
    """The next global card-change number (the counter row is locked until commit)."""
    value: int = await conn.fetchval(
        "UPDATE counters SET value = value + 1 WHERE name = 'card_gseq' RETURNING value"
    )
    return value


async def set_pending(
    conn: PgConn, card_id: str, users: Iterable[str], due_at: int | None, *, new: bool = False
) -> None:
    """The card's todo rows become ``users``'; a ``new`` card has none to delete.

    Statements, not rows, are what a push pays for here (each is a round
    trip on the writer's one connection), hence ``unnest`` and the skips.
    """
    if not new:
        await conn.execute("DELETE FROM card_pending WHERE card_id = $1", card_id)
    wanted = list(users)
    if wanted:
        await conn.execute(
            'INSERT INTO card_pending ("user", card_id, due_at)'
            " SELECT u, $2, $3 FROM unnest($1::text[]) AS t(u)",
            wanted,
            card_id,
            due_at,
        )


async def set_timers(
    conn: PgConn, card_id: str, timers: Iterable[tuple[str, int]], *, new: bool = False
) -> None:
    if not new:
        await conn.execute("DELETE FROM timers WHERE card_id = $1 AND NOT done", card_id)
    wanted = list(timers)
    if wanted:
        await conn.executemany(
            "INSERT INTO timers (card_id, kind, fire_at) VALUES ($1, $2, $3)",
            [(card_id, kind, at) for kind, at in wanted],
        )


async def ensure_notice_conv(conn: PgConn, conv: str, user: str, name: str, now: int) -> None:
    await conn.execute(
        "INSERT INTO conversations (id, kind, name, owner, last_seq, created_at)"
        " VALUES ($1, 'notice', $2, NULL, 0, $3) ON CONFLICT DO NOTHING",
        conv,
        name,
        now,
    )
    await conn.execute(
        'INSERT INTO members (conv, "user", role, read_seq) VALUES ($1, $2, $3, 0)'
        " ON CONFLICT DO NOTHING",
        conv,
        user,
        ROLE_MEMBER,
    )


async def ensure_notice_convs(conn: PgConn, convs: list[tuple[str, str, str]], now: int) -> None:
    """``ensure_notice_conv`` for many ``(conv, user, name)``: a few statements, not 2 × N.

    A broadcast conversation (``b:``) appears once per holder in ``convs``.
    Its id is named after its exact member set (``cards/recipients.py``), so
    when it already exists with that many members nothing is written.
    """
    by_conv: dict[str, tuple[str, list[str]]] = {}
    for conv, user, name in convs:
        by_conv.setdefault(conv, (name, []))[1].append(user)
    if not by_conv:
        return
    # One round trip: create what is missing, and count the members of what was there.
    rows = await conn.fetch(
        "WITH ins AS (INSERT INTO conversations (id, kind, name, owner, last_seq, created_at)"
        " SELECT id, 'notice', name, NULL, 0, $3"
        " FROM unnest($1::text[], $2::text[]) AS t(id, name)"
        " ON CONFLICT DO NOTHING RETURNING id)"
        " SELECT t.id, t.id IN (SELECT id FROM ins),"
        " CASE WHEN t.id LIKE 'b:%' THEN (SELECT count(*) FROM members m WHERE m.conv = t.id)"
        " END FROM unnest($1::text[]) AS t(id)",
        list(by_conv),
        [name for name, _ in by_conv.values()],
        now,
    )
    existing = {r[0]: r[2] for r in rows if not r[1]}
    convs_out: list[str] = []
    users_out: list[str] = []
    for conv, (_, users) in by_conv.items():
        if conv.startswith(BROADCAST_PREFIX) and existing.get(conv) == len(users):
            continue
        convs_out += [conv] * len(users)
        users_out += users
    if convs_out:
        await conn.execute(
            'INSERT INTO members (conv, "user", role, read_seq)'
            " SELECT conv, u, $3, 0 FROM unnest($1::text[], $2::text[]) AS t(conv, u)"
            " ON CONFLICT DO NOTHING",
            convs_out,
            users_out,
            ROLE_MEMBER,
        )


class _VersionMoved(Exception):
    """Raised inside a write job so its savepoint (and the gseq bump) is rolled back."""


class PgCardsMixin(CardDocSealing, PgJobs):
    """Card storage; needs ``_write``/``_read``, ``_insert`` and ``audit`` from the store."""

    _insert: Callable[[PgConn, NewMessage], Awaitable[Message]]
    audit: PostgresAuditLog

    # -- cards ---------------------------------------------------------------
    async def create_card(
        self, card: NewCard, messages: list[NewMessage], notice_convs: list[tuple[str, str, str]]
    ) -> tuple[CardRecord, list[Message], bool]:
        """A creator on another node racing for the same ``(app_id, out_track_id)``:
        whichever inserts second writes nothing and returns the first one's card."""
        track = card.doc["out_track_id"]

        async def job(conn: PgConn) -> tuple[CardRecord, list[Message], bool]:
            row = await conn.fetchrow(_CARD_BY_TRACK, card.app_id, track)
            if row is not None:
                return self._card_record(row), [], True
            gseq = await next_gseq(conn)  # locks the counter: racing creators queue here
            inserted = await conn.fetchval(
                f"INSERT INTO cards ({CARD_COLUMNS}, audience)"
                " VALUES ($1, $2, $3, 1, $4, $5, $6, 'none', $7, $7, $8)"
                " ON CONFLICT (app_id, out_track_id) DO NOTHING RETURNING id",
                card.id,
                card.app_id,
                track,
                gseq,
                dump_json(self._seal_doc(card.id, card.doc)),
                dump_json(card.approval),
                card.now,
                card.audience or None,
            )
            if inserted is None:  # another node created it after our lookup
                raise _TrackTaken
            if card.holders:
                await conn.execute(
                    'INSERT INTO card_holders ("user", card_id)'
                    " SELECT u, $2 FROM unnest($1::text[]) AS t(u) ON CONFLICT DO NOTHING",
                    list(card.holders),
                    card.id,
                )
            await set_pending(conn, card.id, card.pending, card.doc.get("due_at"), new=True)
            await set_timers(conn, card.id, card.timers, new=True)
            await ensure_notice_convs(conn, notice_convs, card.now)
            stored = [await self._insert(conn, m) for m in messages]
            return created_card(card, gseq), stored, False

        try:
            return await self._write(job)
        except _TrackTaken:
            existing = await self.get_card_by_track(card.app_id, track)
            assert existing is not None
            return existing, [], True

    async def get_card(self, card_id: str) -> CardRecord | None:
        async def job(conn: PgConn) -> CardRecord | None:
            row = await conn.fetchrow(f"SELECT {CARD_COLUMNS} FROM cards WHERE id = $1", card_id)
            return None if row is None else self._card_record(row)

        return await self._read(job)

    async def get_card_by_track(self, app_id: str, out_track_id: str) -> CardRecord | None:
        async def job(conn: PgConn) -> CardRecord | None:
            row = await conn.fetchrow(_CARD_BY_TRACK, app_id, out_track_id)
            return None if row is None else self._card_record(row)

        return await self._read(job)

    async def cards_by_ids(self, ids: Iterable[str]) -> dict[str, CardRecord]:
        wanted = list(dict.fromkeys(ids))

        async def job(conn: PgConn) -> dict[str, CardRecord]:
            rows = await conn.fetch(
                f"SELECT {CARD_COLUMNS} FROM cards WHERE id = ANY($1::text[])", wanted
            )
            return {row[0]: self._card_record(row) for row in rows}

        return await self._read(job)

    async def save_card(self, change: CardChange) -> CardRecord | None:
        """Write a new version if the card is still at ``expected_version``; else None.

        The todo rows, timers, audit record and callback outbox entry commit
        in the same transaction as the new version, or not at all.
        """
        saved = await self.save_card_holders(change)
        return None if saved is None else saved[0]

    async def save_card_holders(
        self, change: CardChange
    ) -> tuple[CardRecord, list[Message]] | None:
        """``save_card`` plus ``change.new_holders`` (holder row, conversation, card message)."""

        async def job(conn: PgConn) -> tuple[CardRecord, list[Message]]:
            # Version check first: a loser waits on the card's row lock, then
            # finds the version moved without ever touching the gseq counter.
            row = await conn.fetchrow(
                "UPDATE cards SET version = version + 1, doc = $1, approval = $2,"
                " callback = $3, updated_at = $4 WHERE id = $5 AND version = $6"
                f" RETURNING {CARD_COLUMNS}",
                dump_json(self._seal_doc(change.card_id, change.doc)),
                dump_json(change.approval),
                change.callback,
                change.now,
                change.card_id,
                change.expected_version,
            )
            if row is None:
                raise _VersionMoved
            gseq = await next_gseq(conn)
            await conn.execute("UPDATE cards SET gseq = $1 WHERE id = $2", gseq, change.card_id)
            stored = []
            for h in change.new_holders:
                status = await conn.execute(
                    'INSERT INTO card_holders ("user", card_id) VALUES ($1, $2)'
                    " ON CONFLICT DO NOTHING",
                    h.user,
                    change.card_id,
                )
                if status != "INSERT 0 0":
                    conv, who, name = h.notice_conv
                    await ensure_notice_conv(conn, conv, who, name, change.now)
                    stored.append(await self._insert(conn, h.message))
            await set_pending(conn, change.card_id, change.pending, change.doc.get("due_at"))
            if change.timers is not None:
                await set_timers(conn, change.card_id, change.timers)
            if change.audit is not None:
                a = change.audit
                await self.audit.append_in(conn, change.now, a.actor, a.action, a.target, a.details)
            if change.outbox is not None:
                await insert_outbox(conn, (change.outbox,), change.now)
            return replace(self._card_record(row), gseq=gseq), stored

        try:
            return await self._write(job)
        except _VersionMoved:
            return None

    async def set_card_callback(
        self, card_id: str, state: str, expected_version: int
    ) -> CardRecord | None:
        """The delivery status only: same version, new ``gseq`` (see ``CardStore``)."""

        async def job(conn: PgConn) -> CardRecord:
            # Version check first, as in save_card: a miss never touches the counter.
            moved = await conn.fetchval(
                "UPDATE cards SET callback = $1 WHERE id = $2 AND version = $3 RETURNING id",
                state,
                card_id,
                expected_version,
            )
            if moved is None:
                raise _VersionMoved
            row = await conn.fetchrow(
                f"UPDATE cards SET gseq = $1 WHERE id = $2 RETURNING {CARD_COLUMNS}",
                await next_gseq(conn),
                card_id,
            )
            assert row is not None  # the row is locked by the update above
            return self._card_record(row)

        try:
            return await self._write(job)
        except _VersionMoved:
            return None

    async def card_holders(self, card_id: str) -> list[str]:
        """Holders by a row of their own, and the members of the card's audience."""

        async def job(conn: PgConn) -> list[str]:
            rows = await conn.fetch(
                'SELECT "user" FROM card_holders WHERE card_id = $1'
                ' UNION SELECT m."user" FROM cards c JOIN members m ON m.conv = c.audience'
                " WHERE c.id = $1",
                card_id,
            )
            return [r[0] for r in rows]

        return await self._read(job)

    async def cards_changed_for(self, user: str, after_gseq: int, limit: int) -> list[CardRecord]:
        async def job(conn: PgConn) -> list[CardRecord]:
            rows = await conn.fetch(
                f"SELECT {qualified(CARD_COLUMNS, 'c')} FROM cards c WHERE c.id IN ("
                ' SELECT h.card_id FROM card_holders h WHERE h."user" = $1'
                " UNION ALL SELECT a.id FROM members m JOIN cards a ON a.audience = m.conv"
                f' WHERE m."user" = $1 AND {BROADCAST_RANGE} AND a.gseq > $2'
                ") AND c.gseq > $2 ORDER BY c.gseq LIMIT $3",
                user,
                after_gseq,
                limit,
            )
            return [self._card_record(r) for r in rows]

        return await self._read(job)

    async def todo_cards(self, user: str, limit: int) -> tuple[list[CardRecord], int]:
        async def job(conn: PgConn) -> tuple[list[CardRecord], int]:
            total = await conn.fetchval('SELECT count(*) FROM card_pending WHERE "user" = $1', user)
            rows = await conn.fetch(
                f"SELECT {qualified(CARD_COLUMNS, 'c')}"
                ' FROM card_pending p JOIN cards c ON c.id = p.card_id WHERE p."user" = $1'
                " ORDER BY p.due_at IS NULL, p.due_at, c.created_at LIMIT $2",
                user,
                limit,
            )
            return [self._card_record(r) for r in rows], int(total)

        return await self._read(job)

    async def deliver_notice(
        self, messages: list[NewMessage], notice_convs: list[tuple[str, str, str]], now: int
    ) -> list[Message]:
        async def job(conn: PgConn) -> list[Message]:
            await ensure_notice_convs(conn, notice_convs, now)
            return [await self._insert(conn, m) for m in messages]

        return await self._write(job)


class _TrackTaken(Exception):
    """Raised inside a write job when another node created the same card first."""
