"""Row → record conversions shared by every SQL backend. Pure: no SQL engine, no I/O.

Why shared: both backends select the same columns in the same order (the
``*_COLUMNS`` constants) and store JSON as its exact serialised text, so one
conversion keeps what SQLite and PostgreSQL hand back identical — the store
contract suite compares records for equality.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

from imserver.store.records import (
    AppRecord,
    CardRecord,
    Conversation,
    DingStatus,
    Message,
    NewCard,
    NewMessage,
    OutboxItem,
    StoredApp,
    UnitMemberRow,
)

MSG_COLUMNS: Final = "conv, seq, sender, device, kind, body, ts, client_msg_id, recalled"
CONV_COLUMNS: Final = "id, kind, name, owner, last_seq, created_at, archived"
BROADCAST_PREFIX: Final = "b:"
"""Broadcast conversations (``b:<app>:<digest of the member set>``): an app's card or
notice to many people, stored once; their members hold its cards (``cards.audience``)."""

BROADCAST_RANGE: Final = "m.conv >= 'b:' AND m.conv < 'b;'"
"""A user's broadcast memberships as a range of ``members_by_user`` (``;`` follows ``:``)."""

CARD_COLUMNS: Final = (
    "id, app_id, out_track_id, version, gseq, doc, approval, callback, created_at, updated_at"
)
OUTBOX_COLUMNS: Final = (
    "id, app_id, card_id, action_id, payload, state, attempts, next_at, last_error, kind"
)
APP_COLUMNS: Final = (
    "id, name, secret, callback_url, scope, permissions, previous_secret, previous_secret_until,"
    " events"
)
STORED_APP_COLUMNS: Final = APP_COLUMNS + ", created_at, updated_at"

Row = Iterable[Any]


def qualified(columns: str, alias: str) -> str:
    """``columns`` each prefixed with ``alias.``, for joins."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def dump_json(value: Any) -> str:
    """The stored text of a JSON value; what :func:`load_json` reads back."""
    return orjson.dumps(value).decode()


def load_json(raw: str | bytes) -> Any:
    return orjson.loads(raw)


def message_from_row(row: Row) -> Message:
    conv, seq, sender, device, kind, body, ts, cmid, recalled = row
    return Message(conv, seq, sender, device, kind, load_json(body), ts, cmid, bool(recalled))


def stored_message(new: NewMessage, seq: int) -> Message:
    """The record of ``new`` as just stored at ``seq`` (not recalled)."""
    return Message(
        new.conv, seq, new.sender, new.device, new.kind, new.body, new.ts, new.client_msg_id
    )


def conversation_from_row(row: Row) -> Conversation:
    conv, kind, name, owner, last_seq, created_at, archived = row
    return Conversation(conv, kind, name, owner, last_seq, created_at, bool(archived))


def card_from_row(row: Row) -> CardRecord:
    """The card as stored (sealed fields still sealed; the store opens them)."""
    cid, app, track, version, gseq, doc, approval, callback, created, updated = row
    return CardRecord(
        cid,
        app,
        track,
        version,
        gseq,
        load_json(doc),
        load_json(approval),
        callback,
        created,
        updated,
    )


def outbox_from_row(row: Row) -> OutboxItem:
    oid, app, card, action_id, payload, state, attempts, next_at, error, kind = row
    return OutboxItem(
        oid, app, card, action_id, load_json(payload), state, attempts, next_at, error, kind
    )


def app_from_row(row: Row) -> AppRecord:
    app_id, name, secret, callback_url, scope, permissions, previous, until, events = row
    return AppRecord(
        app_id,
        name,
        secret,
        callback_url,
        tuple(load_json(scope)),
        tuple(load_json(permissions)),
        previous,
        int(until),
        tuple(load_json(events)),
    )


def stored_app_from_row(row: Row) -> StoredApp:
    """An app and its times from a ``STORED_APP_COLUMNS`` row."""
    *app, created_at, updated_at = row
    return StoredApp(app_from_row(app), int(created_at), int(updated_at))


def ding_status_from_rows(rows: Sequence[Any]) -> DingStatus | None:
    """A DING's status from its ``(user, sender, confirmed_at)`` rows in user order;
    None when there are none (no such DING)."""
    if not rows:
        return None
    confirmed, unconfirmed = confirmed_split((r[0], r[2]) for r in rows)
    return DingStatus(rows[0][1], confirmed, unconfirmed)


def confirmed_split(rows: Iterable[Any]) -> tuple[list[str], list[str]]:
    """(confirmed, unconfirmed) users of ``(user, confirmed_at)`` DING rows, in row order."""
    confirmed: list[str] = []
    unconfirmed: list[str] = []
    for user, confirmed_at in rows:
        (unconfirmed if confirmed_at is None else confirmed).append(user)
    return confirmed, unconfirmed


def created_card(card: NewCard, gseq: int) -> CardRecord:
    """The record of ``card`` as just stored: version 1, change ``gseq``, no callback yet."""
    return CardRecord(
        card.id,
        card.app_id,
        card.doc["out_track_id"],
        1,
        gseq,
        card.doc,
        card.approval,
        "none",
        card.now,
        card.now,
    )


def unit_member_from_row(row: Row) -> UnitMemberRow:
    """A membership from ``(user, name, unit, title, leader, path)``."""
    user, name, unit, title, leader, path = row
    return UnitMemberRow(user, name, unit, title, bool(leader), path)
