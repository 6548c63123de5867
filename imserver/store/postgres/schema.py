"""PostgreSQL SQL for each version of ``store/migrations.py`` ``SCHEMA_HISTORY``, applied at open.

Same tables, columns and constraints as the SQLite schema, in PostgreSQL
types: ``BIGINT`` for seqs and millisecond timestamps, ``BOOLEAN`` for flags,
``TEXT`` for JSON (its exact serialised form, so records round-trip byte for
byte as they do from SQLite). ``"user"`` is a reserved word here and is quoted.

Several nodes may start at once against one database: :func:`migrate` takes a
transaction-scoped advisory lock first, so exactly one applies what is
pending and the others then find nothing to do. All pending versions apply
in one transaction with their ``schema_migrations`` rows: a failure leaves
the database at the version it had. A database with versions this release
does not know (written by a newer one) is refused, never migrated.

What ``store check`` and ``audit verify`` read back is ``schema_check.py``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Final

from imserver.store.migrations import refuse_newer, with_sql
from imserver.store.postgres.audit import create_audit_schema
from imserver.store.postgres.jobs import PgConn

log = logging.getLogger(__name__)

MIGRATION_LOCK: Final = 0x1A5E_4E01
"""``pg_advisory_xact_lock`` key held while migrating (any constant unique to imserver)."""

_SQL: Final[dict[int, str]] = {
    1: """
        CREATE TABLE users (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL DEFAULT '',
            created_at  BIGINT NOT NULL
        );
        CREATE TABLE conversations (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CONSTRAINT conversations_kind CHECK (kind IN ('dm', 'group')),
            name        TEXT NOT NULL DEFAULT '',
            owner       TEXT,
            last_seq    BIGINT NOT NULL DEFAULT 0,
            created_at  BIGINT NOT NULL
        );
        CREATE TABLE members (
            conv        TEXT NOT NULL,
            "user"      TEXT NOT NULL,
            role        TEXT NOT NULL,
            read_seq    BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (conv, "user")
        );
        CREATE INDEX members_by_user ON members ("user", conv);
        CREATE TABLE messages (
            conv          TEXT NOT NULL,
            seq           BIGINT NOT NULL,
            sender        TEXT NOT NULL,
            device        TEXT NOT NULL,
            kind          TEXT NOT NULL,
            body          TEXT NOT NULL,
            ts            BIGINT NOT NULL,
            client_msg_id TEXT,
            recalled      BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (conv, seq)
        );
        CREATE UNIQUE INDEX messages_idempotency
            ON messages (sender, client_msg_id) WHERE client_msg_id IS NOT NULL;
        CREATE TABLE files (
            id          TEXT PRIMARY KEY,
            size        BIGINT NOT NULL,
            mime        TEXT NOT NULL,
            created_at  BIGINT NOT NULL
        );
        CREATE TABLE file_uploaders (
            file        TEXT NOT NULL,
            "user"      TEXT NOT NULL,
            PRIMARY KEY (file, "user")
        );
        CREATE TABLE file_refs (
            file        TEXT NOT NULL,
            conv        TEXT NOT NULL,
            PRIMARY KEY (file, conv)
        );
    """,
    2: """
        ALTER TABLE conversations DROP CONSTRAINT conversations_kind;
        ALTER TABLE conversations ADD CONSTRAINT conversations_kind
            CHECK (kind IN ('dm', 'group', 'notice'));
        CREATE TABLE apps (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL DEFAULT '',
            secret        TEXT NOT NULL,
            callback_url  TEXT NOT NULL,
            scope         TEXT NOT NULL,
            updated_at    BIGINT NOT NULL
        );
        CREATE TABLE counters (
            name   TEXT PRIMARY KEY,
            value  BIGINT NOT NULL
        );
        INSERT INTO counters VALUES ('card_gseq', 0);
        CREATE TABLE cards (
            id            TEXT PRIMARY KEY,
            app_id        TEXT NOT NULL,
            out_track_id  TEXT NOT NULL,
            version       BIGINT NOT NULL,
            gseq          BIGINT NOT NULL,
            doc           TEXT NOT NULL,
            approval      TEXT NOT NULL,
            callback      TEXT NOT NULL DEFAULT 'ok',
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL,
            UNIQUE (app_id, out_track_id)
        );
        CREATE INDEX cards_by_gseq ON cards (gseq);
        CREATE TABLE card_holders (
            "user"   TEXT NOT NULL,
            card_id  TEXT NOT NULL,
            PRIMARY KEY ("user", card_id)
        );
        CREATE INDEX card_holders_by_card ON card_holders (card_id);
        CREATE TABLE card_pending (
            "user"   TEXT NOT NULL,
            card_id  TEXT NOT NULL,
            due_at   BIGINT,
            PRIMARY KEY ("user", card_id)
        );
        CREATE INDEX card_pending_by_card ON card_pending (card_id);
        CREATE TABLE outbox (
            id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            app_id        TEXT NOT NULL,
            card_id       TEXT NOT NULL,
            action_id     TEXT NOT NULL,
            payload       TEXT NOT NULL,
            state         TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts      INTEGER NOT NULL DEFAULT 0,
            next_at       BIGINT NOT NULL,
            lease_until   BIGINT NOT NULL DEFAULT 0,
            last_error    TEXT NOT NULL DEFAULT '',
            created_at    BIGINT NOT NULL,
            UNIQUE (card_id, action_id)
        );
        CREATE INDEX outbox_due ON outbox (state, next_at);
    """,
    3: """
        CREATE TABLE timers (
            id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            card_id      TEXT NOT NULL,
            kind         TEXT NOT NULL CHECK (kind IN ('remind', 'overdue', 'escalate')),
            fire_at      BIGINT NOT NULL,
            lease_until  BIGINT NOT NULL DEFAULT 0,
            done         BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE INDEX timers_due ON timers (done, fire_at);
        CREATE INDEX timers_by_card ON timers (card_id);
        CREATE TABLE dings (
            conv          TEXT NOT NULL,
            seq           BIGINT NOT NULL,
            "user"        TEXT NOT NULL,
            sender        TEXT NOT NULL,
            card_id       TEXT,
            confirmed_at  BIGINT,
            notified      INTEGER NOT NULL DEFAULT 0,
            next_at       BIGINT,
            PRIMARY KEY (conv, seq, "user")
        );
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
            sort        BIGINT NOT NULL DEFAULT 0,
            sync_gen    BIGINT NOT NULL DEFAULT 0,
            updated_at  BIGINT NOT NULL
        );
        CREATE UNIQUE INDEX units_by_path ON units (path);
        CREATE INDEX units_by_parent ON units (parent);
        CREATE TABLE unit_members (
            unit      TEXT NOT NULL,
            "user"    TEXT NOT NULL,
            title     TEXT NOT NULL DEFAULT '',
            leader    BOOLEAN NOT NULL DEFAULT FALSE,
            sync_gen  BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (unit, "user")
        );
        CREATE INDEX unit_members_by_user ON unit_members ("user");
        ALTER TABLE users ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;
        ALTER TABLE users ADD COLUMN profile TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE users ADD COLUMN sync_gen BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE users ADD COLUMN profile_digest TEXT NOT NULL DEFAULT '';
        CREATE TABLE admin_grants (
            "user"      TEXT NOT NULL,
            unit        TEXT NOT NULL,
            granted_at  BIGINT NOT NULL,
            PRIMARY KEY ("user", unit)
        );
        INSERT INTO counters VALUES ('directory_sync', 0);
    """,
    5: """
        CREATE TABLE user_scopes (
            "user"      TEXT NOT NULL,
            scope       TEXT NOT NULL,
            granted_at  BIGINT NOT NULL,
            PRIMARY KEY ("user", scope)
        );
    """,
    6: """
        ALTER TABLE apps ADD COLUMN permissions TEXT NOT NULL DEFAULT '[]';
        CREATE TABLE refresh_tokens (
            hash        TEXT PRIMARY KEY,
            "user"      TEXT NOT NULL,
            device      TEXT NOT NULL,
            expires_at  BIGINT NOT NULL,
            used        BOOLEAN NOT NULL DEFAULT FALSE,
            created_at  BIGINT NOT NULL
        );
        CREATE INDEX refresh_tokens_by_device ON refresh_tokens ("user", device);
        CREATE TABLE revocations (
            "user"      TEXT NOT NULL,
            device      TEXT NOT NULL,
            revoked_at  BIGINT NOT NULL,
            PRIMARY KEY ("user", device)
        );
    """,
    7: """
        ALTER TABLE conversations ADD COLUMN archived BOOLEAN NOT NULL DEFAULT FALSE;
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
            seq   BIGINT NOT NULL,
            PRIMARY KEY (kind, id)
        );
        CREATE UNIQUE INDEX directory_changes_by_seq ON directory_changes (seq);
        -- No backfill of the change log or head counts as SQLite's version 8
        -- does: no PostgreSQL store existed before version 8, so every one
        -- reaches it from empty tables.
        INSERT INTO counters VALUES ('directory_change', 0);
        CREATE TABLE user_name_chars (
            ch      TEXT NOT NULL,
            "user"  TEXT NOT NULL,
            PRIMARY KEY (ch, "user")
        );
        ALTER TABLE units ADD COLUMN members BIGINT NOT NULL DEFAULT 0;
        -- SQLite's instr(), so the address book's search conditions (built once
        -- for both backends) read the same here. Lower-case "text": a parameter
        -- type, not a column, so _bytewise leaves it alone.
        CREATE FUNCTION instr(haystack text, needle text) RETURNS INTEGER
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS 'SELECT strpos(haystack, needle)';
    """,
    9: """
        ALTER TABLE apps ADD COLUMN previous_secret TEXT NOT NULL DEFAULT '';
        ALTER TABLE apps ADD COLUMN previous_secret_until BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE apps ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
        UPDATE apps SET created_at = updated_at;
    """,
    10: """
        ALTER TABLE apps ADD COLUMN events TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'action'
            CHECK (kind IN ('action', 'event'));
    """,
    11: """
        CREATE TABLE card_templates (
            app_id       TEXT NOT NULL,
            template_id  TEXT NOT NULL,
            version      BIGINT NOT NULL,
            template     TEXT NOT NULL,
            slots        TEXT NOT NULL,
            created_at   BIGINT NOT NULL,
            PRIMARY KEY (app_id, template_id, version)
        );
    """,
    12: """
        ALTER TABLE cards ADD COLUMN audience TEXT;
        CREATE INDEX cards_by_audience ON cards (audience, gseq) WHERE audience IS NOT NULL;
    """,
    13: """
        CREATE TABLE dashboard_logouts (
            sid         TEXT PRIMARY KEY,
            expires_at  BIGINT NOT NULL
        );
        CREATE INDEX dashboard_logouts_by_expiry ON dashboard_logouts (expires_at);
    """,
}


def _bytewise(sql: str) -> str:
    """Every ``TEXT`` column with the "C" collation: compared byte by byte, as SQLite does.

    Orderings, keyset cursors and unit-path ranges (``path < prefix || '\\x7f'``)
    then mean the same on both backends whatever the database's default
    locale is; a linguistic collation would put ``/`` and letters elsewhere.
    """
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)


MIGRATIONS: Final = with_sql({version: _bytewise(sql) for version, sql in _SQL.items()})
"""``(version, description, sql)``, versions and descriptions from ``SCHEMA_HISTORY``."""


async def applied_versions(conn: PgConn) -> list[int]:
    """Versions recorded in ``schema_migrations``, ascending (empty on a new database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    return [
        r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    ]


async def migrate(conn: PgConn, describe: str = "the PostgreSQL database") -> list[int]:
    """Apply every pending migration in one transaction; return the versions applied now.

    ``READ COMMITTED`` whatever the database's default: each statement then
    sees what the node that held the lock before committed. Under
    ``REPEATABLE READ`` the snapshot would be taken before the lock was
    granted, and a node that waited would apply the migrations again.
    Raises :class:`StoreTooNew` (naming ``describe``) for a newer schema.
    """
    async with conn.transaction(isolation="read_committed"):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        done = await applied_versions(conn)
        refuse_newer(describe, done)
        applied: list[int] = []
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)  # simple-query protocol: several statements at once
            await conn.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                version,
                description,
                int(time.time()),
            )
            applied.append(version)
        await create_audit_schema(conn)
    if applied:
        log.info("postgres store: applied schema migrations %s", applied)
    return applied
