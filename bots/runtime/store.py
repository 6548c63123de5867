"""The bot runtime's own durable state: events, actions and two outboxes (SQLite).

Why a store of its own: the webhook answers 2xx only once the event and the
card operation it causes are on disk, and the callback answers 2xx only once
the forward to the business system is; after a ``kill -9`` the outboxes are
replayed and the idempotency keys (event id, action id) make every replay a
no-op where it already happened.

Calls are synchronous ``sqlite3`` on the event loop on purpose: each is one
small transaction on a local WAL file, shorter than a thread hop would be.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bots.runtime.model import BotEvent, EventRejected

#: Outbox lanes: card operations towards the server, forwards to the business system.
CARD_LANE = "card"
FORWARD_LANE = "forward"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    bot TEXT NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (bot, event_id)
);
CREATE TABLE IF NOT EXISTS actions (
    bot TEXT NOT NULL, action_id TEXT NOT NULL, out_track_id TEXT NOT NULL,
    card_update TEXT, received_at REAL NOT NULL, PRIMARY KEY (bot, action_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bot TEXT NOT NULL, lane TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, last_error TEXT, result TEXT,
    created_at REAL NOT NULL, done_at REAL,
    UNIQUE (bot, lane, key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (bot, lane, state, next_at);
CREATE TABLE IF NOT EXISTS cards (
    bot TEXT NOT NULL, out_track_id TEXT NOT NULL, event_id TEXT NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY (bot, out_track_id)
);
CREATE TABLE IF NOT EXISTS event_state (
    bot TEXT NOT NULL, event_id TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (bot, event_id)
);
CREATE TABLE IF NOT EXISTS poll_cursor (
    bot TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_at REAL NOT NULL
);
"""

#: ``(key, op)`` rows for the card lane; a push op may carry ``meta`` (stored
#: in ``cards``, so a later callback finds its event and meta).
OpRows = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One pending delivery: ``op`` is the JSON-able operation to perform."""

    id: int
    bot: str
    lane: str
    key: str
    op: dict[str, Any]
    attempts: int


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class BotStore:
    """One SQLite file for every bot of a runtime (rows are keyed by bot name)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a 2xx given to a business system must survive a power cut too.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- events ------------------------------------------------------------------

    def accept_event(
        self,
        bot: str,
        event: BotEvent,
        ops: OpRows,
        hold_s: float,
        state: dict[str, Any] | None = None,
    ) -> bool:
        """Record ``event``, its card operations and its state atomically; False if seen.

        ``ops`` are ``(key, op)`` rows for the card lane. ``hold_s`` keeps the
        workers off them for a moment, so the webhook can try them inline
        without a worker sending the same operation at the same time.
        """
        now = time.time()
        with self._tx():
            return self._insert_event(bot, event, ops, now + hold_s, now, state)

    def poll_cursor(self, bot: str) -> str | None:
        """Where the bot's feed left off (None before the first page)."""
        row = self._db.execute("SELECT cursor FROM poll_cursor WHERE bot = ?", (bot,)).fetchone()
        return None if row is None else str(row[0])

    def accept_page(
        self,
        bot: str,
        events: Sequence[BotEvent],
        prepare: Callable[[BotEvent], tuple[OpRows, dict[str, Any] | None]],
        cursor: str,
    ) -> tuple[list[str], list[tuple[str, EventRejected]]]:
        """Record a polled page's new events and the feed's next cursor atomically.

        ``prepare`` (the bot, via the webhook's path) runs inside the
        transaction, so an event may update one earlier in the same page. A
        kill -9 before the commit leaves the old cursor: the page is read
        again and nothing of it was kept. Returns the accepted event ids and
        ``(event_id, refusal)`` pairs (skipped; the cursor moves past them).
        """
        accepted: list[str] = []
        refused: list[tuple[str, EventRejected]] = []
        now = time.time()
        with self._tx():
            for event in events:
                if self.event(bot, event.event_id) is not None:
                    continue  # a repeat: the page was read before, or the webhook had it
                try:
                    ops, state = prepare(event)
                except EventRejected as e:
                    refused.append((event.event_id, e))
                    continue
                if self._insert_event(bot, event, ops, now, now, state):
                    accepted.append(event.event_id)
            self._db.execute(
                "INSERT INTO poll_cursor (bot, cursor, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (bot) DO UPDATE SET cursor = excluded.cursor,"
                " updated_at = excluded.updated_at",
                (bot, cursor, now),
            )
        return accepted, refused

    def _insert_event(
        self,
        bot: str,
        event: BotEvent,
        ops: OpRows,
        next_at: float,
        now: float,
        state: dict[str, Any] | None,
    ) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO events (bot, event_id, type, data, received_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (bot, event.event_id, event.type, _dumps(event.data), event.received_at),
        )
        if cur.rowcount == 0:
            return False
        self._enqueue_card_ops(bot, ops, next_at, now)
        if state is not None:
            self._set_state(bot, event.event_id, state)
        return True

    def forget_event(self, bot: str, event_id: str) -> None:
        """Drop a refused event and its operations, so a corrected resend is new."""
        with self._tx():
            for table in ("events", "cards", "event_state"):
                self._db.execute(
                    f"DELETE FROM {table} WHERE bot = ? AND event_id = ?",
                    (bot, event_id),
                )
            self._db.execute(
                "DELETE FROM outbox WHERE bot = ? AND lane = ?"
                " AND json_extract(op, '$.event_id') = ?",
                (bot, CARD_LANE, event_id),
            )

    def abandon_event(self, bot: str, event_id: str, why: str) -> None:
        """Park every pending card operation of an event as ``failed`` (it was refused
        after some of its cards were pushed: the event is kept, so a repeat says so)."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'failed', last_error = ?, done_at = ?"
                " WHERE bot = ? AND lane = ? AND state = 'pending'"
                " AND json_extract(op, '$.event_id') = ?",
                (why[:500], time.time(), bot, CARD_LANE, event_id),
            )

    def card_owner(self, bot: str, out_track_id: str) -> tuple[str, dict[str, Any]] | None:
        """The event a keyed card belongs to, and the meta it was pushed with."""
        row = self._db.execute(
            "SELECT event_id, meta FROM cards WHERE bot = ? AND out_track_id = ?",
            (bot, out_track_id),
        ).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def state(self, bot: str, event_id: str) -> dict[str, Any]:
        """The bot's state for an event (``{}`` until the bot sets one)."""
        row = self._db.execute(
            "SELECT state FROM event_state WHERE bot = ? AND event_id = ?", (bot, event_id)
        ).fetchone()
        loaded: dict[str, Any] = json.loads(row[0]) if row else {}
        return loaded

    def complete_timer(
        self, item_id: int, bot: str, event_id: str, ops: OpRows, state: dict[str, Any] | None
    ) -> None:
        """A timer fired: mark it done, enqueue what the bot asked for, keep its state."""
        now = time.time()
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'done', done_at = ?, attempts = attempts + 1"
                " WHERE id = ?",
                (now, item_id),
            )
            self._enqueue_card_ops(bot, ops, now, now)
            if state is not None:
                self._set_state(bot, event_id, state)

    def event(self, bot: str, event_id: str) -> BotEvent | None:
        row = self._db.execute(
            "SELECT event_id, type, data, received_at FROM events WHERE bot = ? AND event_id = ?",
            (bot, event_id),
        ).fetchone()
        if row is None:
            return None
        return BotEvent(row[0], row[1], json.loads(row[2]), row[3])

    def event_state(self, bot: str, event_id: str) -> dict[str, Any]:
        """What became of an event's card operations (for the answer to a repeat)."""
        rows = self._db.execute(
            "SELECT state, result FROM outbox WHERE bot = ? AND lane = ?"
            " AND json_extract(op, '$.event_id') = ? AND json_extract(op, '$.op') != 'timer'"
            " AND key NOT LIKE 'a:%' AND key NOT LIKE 't:%' ORDER BY id",
            (bot, CARD_LANE, event_id),
        ).fetchall()
        if not rows:
            return {"state": "ignored"}  # accepted, and the bot had nothing to do
        state = "delivered" if all(r[0] == "done" for r in rows) else rows[-1][0]
        state = "queued" if state == "pending" else state
        out: dict[str, Any] = {"state": state}
        result = json.loads(rows[0][1]) if rows[0][1] else {}
        if "card_id" in result:
            out["card_id"] = result["card_id"]
        return out

    # -- actions -----------------------------------------------------------------

    def accept_action(
        self,
        bot: str,
        action_id: str,
        out_track_id: str,
        forward: dict[str, Any] | None,
        card_update: dict[str, Any] | None,
        ops: OpRows | None = None,
        event_id: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Record a callback and its forward atomically; return the card update to answer.

        For a repeat (the server retried, possibly after a bot restart) nothing
        is recorded and the first answer's update is returned again, as
        docs/cards.md section 6 asks.
        """
        now = time.time()
        with self._tx():
            row = self._db.execute(
                "SELECT card_update FROM actions WHERE bot = ? AND action_id = ?",
                (bot, action_id),
            ).fetchone()
            if row is not None:
                stored: dict[str, Any] | None = json.loads(row[0]) if row[0] else None
                return stored
            self._db.execute(
                "INSERT INTO actions (bot, action_id, out_track_id, card_update, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (bot, action_id, out_track_id, _dumps(card_update) if card_update else None, now),
            )
            if forward is not None:
                self._enqueue(bot, FORWARD_LANE, action_id, forward, now, now)
            self._enqueue_card_ops(bot, ops or [], now, now)
            if state is not None and event_id is not None:
                self._set_state(bot, event_id, state)
        return card_update

    # -- outbox ------------------------------------------------------------------

    def due(self, bot: str, lane: str, limit: int = 50) -> list[OutboxItem]:
        """Pending items of one lane whose time has come, oldest first."""
        rows = self._db.execute(
            "SELECT id, key, op, attempts FROM outbox WHERE bot = ? AND lane = ?"
            " AND state = 'pending' AND next_at <= ? ORDER BY id LIMIT ?",
            (bot, lane, time.time(), limit),
        ).fetchall()
        return [OutboxItem(r[0], bot, lane, r[1], json.loads(r[2]), r[3]) for r in rows]

    def next_due_at(self, bot: str, lane: str) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_at) FROM outbox WHERE bot = ? AND lane = ? AND state = 'pending'",
            (bot, lane),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def mark_done(self, item_id: int, result: dict[str, Any] | None = None) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'done', done_at = ?, result = ?,"
                " attempts = attempts + 1 WHERE id = ?",
                (time.time(), _dumps(result) if result is not None else None, item_id),
            )

    def mark_retry(self, item_id: int, next_at: float, error: str) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?"
                " WHERE id = ?",
                (next_at, error[:500], item_id),
            )

    def mark_failed(self, item_id: int, error: str) -> None:
        """A permanent refusal: kept (operators see it with ``failed``), never retried."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?,"
                " done_at = ? WHERE id = ?",
                (error[:500], time.time(), item_id),
            )

    def release(self, item_id: int) -> None:
        """Make a held item due now (the inline attempt could not finish it)."""
        with self._tx():
            self._db.execute("UPDATE outbox SET next_at = ? WHERE id = ?", (time.time(), item_id))

    def item(self, bot: str, lane: str, key: str) -> OutboxItem | None:
        row = self._db.execute(
            "SELECT id, key, op, attempts FROM outbox WHERE bot = ? AND lane = ? AND key = ?"
            " AND state = 'pending'",
            (bot, lane, key),
        ).fetchone()
        return (
            None
            if row is None
            else OutboxItem(row[0], bot, lane, row[1], json.loads(row[2]), row[3])
        )

    def counts(self, bot: str) -> dict[str, int]:
        """``{"card.pending": n, "forward.done": m, ...}``: for health and tests."""
        rows = self._db.execute(
            "SELECT lane, state, COUNT(*) FROM outbox WHERE bot = ? GROUP BY lane, state", (bot,)
        ).fetchall()
        return {f"{lane}.{state}": n for lane, state, n in rows}

    # -- internals ---------------------------------------------------------------

    def _enqueue(
        self, bot: str, lane: str, key: str, op: dict[str, Any], next_at: float, now: float
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO outbox (bot, lane, key, op, next_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (bot, lane, key, _dumps(op), next_at, now),
        )

    def _enqueue_card_ops(self, bot: str, ops: OpRows, next_at: float, now: float) -> None:
        for key, op in ops:
            if op.get("op") == "update":
                self._supersede(bot, op, now)
            at = float(op["at"]) if op.get("op") == "timer" else next_at
            self._enqueue(bot, CARD_LANE, key, op, at, now)
            if op.get("op") == "push" and "out_track_id" in op.get("card", {}):
                self._db.execute(
                    "INSERT OR IGNORE INTO cards (bot, out_track_id, event_id, meta)"
                    " VALUES (?, ?, ?, ?)",
                    (bot, op["card"]["out_track_id"], op["event_id"], _dumps(op.get("meta", {}))),
                )

    def _supersede(self, bot: str, op: dict[str, Any], now: float) -> None:
        """Retire pending updates of the same card that ``op`` fully replaces.

        An update being retried must not land after a newer one and undo it
        (an aggregate card written twice in quick succession): an older
        pending update setting the same keys is marked done as superseded.
        """
        keys = sorted(op["changes"])
        rows = self._db.execute(
            "SELECT id, op FROM outbox WHERE bot = ? AND lane = ? AND state = 'pending'"
            " AND json_extract(op, '$.op') = 'update' AND json_extract(op, '$.out_track_id') = ?",
            (bot, CARD_LANE, op["out_track_id"]),
        ).fetchall()
        for item_id, raw in rows:
            if sorted(json.loads(raw)["changes"]) == keys:
                self._db.execute(
                    "UPDATE outbox SET state = 'done', done_at = ?, result = ? WHERE id = ?",
                    (now, _dumps({"superseded": True}), item_id),
                )

    def _set_state(self, bot: str, event_id: str, state: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO event_state (bot, event_id, state) VALUES (?, ?, ?)"
            " ON CONFLICT (bot, event_id) DO UPDATE SET state = excluded.state",
            (bot, event_id, _dumps(state)),
        )

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
