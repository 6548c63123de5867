"""Versioned schema migrations for the SQLite store, applied at start.

Versions and their meaning live in ``store/migrations.py`` (one history for
every backend); this module holds only the SQLite SQL of each. Never edit a
released one. Each runs in its own transaction together with its row in
``schema_migrations``.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Final

from imserver.store.migrations import with_sql

_SQL: Final[dict[int, str]] = {
    1: """
        CREATE TABLE users (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL DEFAULT '',
            created_at  INTEGER NOT NULL
        );
        CREATE TABLE conversations (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ('dm', 'group')),
            name        TEXT NOT NULL DEFAULT '',
            owner       TEXT,
            last_seq    INTEGER NOT NULL DEFAULT 0,
            created_at  INTEGER NOT NULL
        );
        CREATE TABLE members (
            conv        TEXT NOT NULL,
            user        TEXT NOT NULL,
            role        TEXT NOT NULL,
            read_seq    INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (conv, user)
        ) WITHOUT ROWID;
        CREATE INDEX members_by_user ON members (user, conv);
        CREATE TABLE messages (
            conv          TEXT NOT NULL,
            seq           INTEGER NOT NULL,
            sender        TEXT NOT NULL,
            device        TEXT NOT NULL,
            kind          TEXT NOT NULL,
            body          BLOB NOT NULL,
            ts            INTEGER NOT NULL,
            client_msg_id TEXT,
            recalled      INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (conv, seq)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX messages_idempotency
            ON messages (sender, client_msg_id) WHERE client_msg_id IS NOT NULL;
        CREATE TABLE files (
            id          TEXT PRIMARY KEY,
            size        INTEGER NOT NULL,
            mime        TEXT NOT NULL,
            created_at  INTEGER NOT NULL
        );
        CREATE TABLE file_uploaders (
            file        TEXT NOT NULL,
            user        TEXT NOT NULL,
            PRIMARY KEY (file, user)
        ) WITHOUT ROWID;
        CREATE TABLE file_refs (
            file        TEXT NOT NULL,
            conv        TEXT NOT NULL,
            PRIMARY KEY (file, conv)
        ) WITHOUT ROWID;
        """,
    2: """
        CREATE TABLE conversations_v2 (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ('dm', 'group', 'notice')),
            name        TEXT NOT NULL DEFAULT '',
            owner       TEXT,
            last_seq    INTEGER NOT NULL DEFAULT 0,
            created_at  INTEGER NOT NULL
        );
        INSERT INTO conversations_v2 SELECT id, kind, name, owner, last_seq, created_at
            FROM conversations;
        DROP TABLE conversations;
        ALTER TABLE conversations_v2 RENAME TO conversations;
        CREATE TABLE apps (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL DEFAULT '',
            secret        TEXT NOT NULL,
            callback_url  TEXT NOT NULL,
            scope         BLOB NOT NULL,
            updated_at    INTEGER NOT NULL
        );
        CREATE TABLE counters (
            name   TEXT PRIMARY KEY,
            value  INTEGER NOT NULL
        );
        INSERT INTO counters VALUES ('card_gseq', 0);
        CREATE TABLE cards (
            id            TEXT PRIMARY KEY,
            app_id        TEXT NOT NULL,
            out_track_id  TEXT NOT NULL,
            version       INTEGER NOT NULL,
            gseq          INTEGER NOT NULL,
            doc           BLOB NOT NULL,
            approval      BLOB NOT NULL,
            callback      TEXT NOT NULL DEFAULT 'ok',
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL,
            UNIQUE (app_id, out_track_id)
        );
        CREATE INDEX cards_by_gseq ON cards (gseq);
        CREATE TABLE card_holders (
            user     TEXT NOT NULL,
            card_id  TEXT NOT NULL,
            PRIMARY KEY (user, card_id)
        ) WITHOUT ROWID;
        CREATE INDEX card_holders_by_card ON card_holders (card_id);
        CREATE TABLE card_pending (
            user     TEXT NOT NULL,
            card_id  TEXT NOT NULL,
            due_at   INTEGER,
            PRIMARY KEY (user, card_id)
        ) WITHOUT ROWID;
        CREATE INDEX card_pending_by_card ON card_pending (card_id);
        CREATE TABLE outbox (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            app_id        TEXT NOT NULL,
            card_id       TEXT NOT NULL,
            action_id     TEXT NOT NULL,
            payload       BLOB NOT NULL,
            state         TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts      INTEGER NOT NULL DEFAULT 0,
            next_at       INTEGER NOT NULL,
            lease_until   INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT NOT NULL DEFAULT '',
            created_at    INTEGER NOT NULL,
            UNIQUE (card_id, action_id)
        );
        CREATE INDEX outbox_due ON outbox (state, next_at);
        """,
    3: """
        CREATE TABLE timers (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            card_id      TEXT NOT NULL,
            kind         TEXT NOT NULL CHECK (kind IN ('remind', 'overdue', 'escalate')),
            fire_at      INTEGER NOT NULL,
            lease_until  INTEGER NOT NULL DEFAULT 0,
            done         INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX timers_due ON timers (done, fire_at);
        CREATE INDEX timers_by_card ON timers (card_id);
        CREATE TABLE dings (
            conv          TEXT NOT NULL,
            seq           INTEGER NOT NULL,
            user          TEXT NOT NULL,
            sender        TEXT NOT NULL,
            card_id       TEXT,
            confirmed_at  INTEGER,
            notified      INTEGER NOT NULL DEFAULT 0,
            next_at       INTEGER,
            PRIMARY KEY (conv, seq, user)
        ) WITHOUT ROWID;
        CREATE INDEX dings_due ON dings (next_at) WHERE next_at IS NOT NULL;
        CREATE INDEX dings_by_card ON dings (card_id) WHERE card_id IS NOT NULL;
        """,
    4: """
        CREATE TABLE units (
            id          TEXT PRIMARY KEY,
            parent      TEXT,
            name        TEXT NOT NULL,
            level       TEXT NOT NULL,
            path        TEXT NOT NULL,
            sort        INTEGER NOT NULL DEFAULT 0,
            sync_gen    INTEGER NOT NULL DEFAULT 0,
            updated_at  INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX units_by_path ON units (path);
        CREATE INDEX units_by_parent ON units (parent);
        CREATE TABLE unit_members (
            unit      TEXT NOT NULL,
            user      TEXT NOT NULL,
            title     TEXT NOT NULL DEFAULT '',
            leader    INTEGER NOT NULL DEFAULT 0,
            sync_gen  INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (unit, user)
        ) WITHOUT ROWID;
        CREATE INDEX unit_members_by_user ON unit_members (user);
        ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE users ADD COLUMN profile BLOB NOT NULL DEFAULT '{}';
        ALTER TABLE users ADD COLUMN sync_gen INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE users ADD COLUMN profile_digest TEXT NOT NULL DEFAULT '';
        CREATE TABLE admin_grants (
            user        TEXT NOT NULL,
            unit        TEXT NOT NULL,
            granted_at  INTEGER NOT NULL,
            PRIMARY KEY (user, unit)
        ) WITHOUT ROWID;
        INSERT INTO counters VALUES ('directory_sync', 0);
        """,
    5: """
        CREATE TABLE user_scopes (
            user        TEXT NOT NULL,
            scope       TEXT NOT NULL,
            granted_at  INTEGER NOT NULL,
            PRIMARY KEY (user, scope)
        ) WITHOUT ROWID;
        """,
    6: """
        ALTER TABLE apps ADD COLUMN permissions BLOB NOT NULL DEFAULT '[]';
        CREATE TABLE refresh_tokens (
            hash        TEXT PRIMARY KEY,
            user        TEXT NOT NULL,
            device      TEXT NOT NULL,
            expires_at  INTEGER NOT NULL,
            used        INTEGER NOT NULL DEFAULT 0,
            created_at  INTEGER NOT NULL
        );
        CREATE INDEX refresh_tokens_by_device ON refresh_tokens (user, device);
        CREATE TABLE revocations (
            user        TEXT NOT NULL,
            device      TEXT NOT NULL,
            revoked_at  INTEGER NOT NULL,
            PRIMARY KEY (user, device)
        ) WITHOUT ROWID;
        """,
    7: """
        ALTER TABLE conversations ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
        """,
    8: """
        ALTER TABLE users ADD COLUMN py_initials TEXT NOT NULL DEFAULT '';
        ALTER TABLE users ADD COLUMN py_full TEXT NOT NULL DEFAULT '';
        CREATE INDEX users_by_name ON users (name, id);
        CREATE INDEX users_by_initials ON users (py_initials, id);
        CREATE INDEX users_by_pinyin ON users (py_full, id);
        CREATE TABLE directory_changes (
            kind  TEXT NOT NULL CHECK (kind IN ('unit', 'member')),
            id    TEXT NOT NULL,
            seq   INTEGER NOT NULL,
            PRIMARY KEY (kind, id)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX directory_changes_by_seq ON directory_changes (seq);
        INSERT INTO directory_changes (kind, id, seq)
            SELECT 'unit', id, ROW_NUMBER() OVER (ORDER BY path) FROM units;
        INSERT INTO directory_changes (kind, id, seq)
            SELECT 'member', id, (SELECT COUNT(*) FROM units) + ROW_NUMBER() OVER (ORDER BY id)
            FROM users WHERE sync_gen != 0;
        INSERT INTO counters VALUES ('directory_change', (SELECT COUNT(*) FROM directory_changes));
        CREATE TABLE user_name_chars (
            ch    TEXT NOT NULL,
            user  TEXT NOT NULL,
            PRIMARY KEY (ch, user)
        ) WITHOUT ROWID;
        ALTER TABLE units ADD COLUMN members INTEGER NOT NULL DEFAULT 0;
        UPDATE units SET members = (
            SELECT COUNT(DISTINCT m.user) FROM units d JOIN unit_members m ON m.unit = d.id
            JOIN users us ON us.id = m.user
            WHERE d.path >= units.path AND d.path < units.path || char(127) AND us.disabled = 0
        );
        """,
    9: """
        ALTER TABLE apps ADD COLUMN previous_secret TEXT NOT NULL DEFAULT '';
        ALTER TABLE apps ADD COLUMN previous_secret_until INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE apps ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
        UPDATE apps SET created_at = updated_at;
        """,
    10: """
        ALTER TABLE apps ADD COLUMN events BLOB NOT NULL DEFAULT '[]';
        ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'action'
            CHECK (kind IN ('action', 'event'));
        """,
    11: """
        CREATE TABLE card_templates (
            app_id       TEXT NOT NULL,
            template_id  TEXT NOT NULL,
            version      INTEGER NOT NULL,
            template     TEXT NOT NULL,
            slots        TEXT NOT NULL,
            created_at   INTEGER NOT NULL,
            PRIMARY KEY (app_id, template_id, version)
        ) WITHOUT ROWID;
        """,
    12: """
        ALTER TABLE cards ADD COLUMN audience TEXT;
        CREATE INDEX cards_by_audience ON cards (audience, gseq) WHERE audience IS NOT NULL;
        """,
    13: """
        CREATE TABLE dashboard_logouts (
            sid         TEXT PRIMARY KEY,
            expires_at  INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX dashboard_logouts_by_expiry ON dashboard_logouts (expires_at);
        """,
}
"""The SQLite SQL of each version of ``store/migrations.py`` ``SCHEMA_HISTORY``."""

MIGRATIONS: Final = with_sql(_SQL)
"""``(version, description, sql)``, versions and descriptions from ``SCHEMA_HISTORY``."""


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet applied; return the versions applied now."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for version, description, sql in MIGRATIONS:
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (version, description, int(time.time())),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied
