"""The schema's history: every migration version and what it means, for every backend.

Why one list: a database migrated to version *n* must mean the same thing
whichever engine holds it, so a PostgreSQL node and a SQLite file can be
compared (and data moved between them) by version alone. Each backend keeps
only its own SQL for each version (``store/sqlite/schema.py``,
``store/postgres/schema.py``) and checks it covers exactly this list.

Append new versions here first; never edit or reorder a released one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from imserver.errors import StoreTooNew

SCHEMA_HISTORY: Final[tuple[tuple[int, str], ...]] = (
    (1, "users, conversations, members, messages, files"),
    (2, "notice conversations, apps, cards, card holders and todo, callback outbox"),
    (3, "card deadline timers, DING confirmations"),
    (4, "organisation directory: units, unit members, user status, admin grants"),
    (5, "user scopes (pii:read)"),
    (6, "identity: app permissions, refresh tokens, revocations"),
    (7, "archived groups (governance)"),
    (
        8,
        "address book: pinyin and name-character search keys, change log, unit head counts",
    ),
    (9, "apps: previous secret and its end (secret rotation with overlap), created time"),
    (10, "apps: event subscriptions; outbox items of kind action or event"),
    (11, "card templates: versions of each app's card templates"),
    (12, "cards: the broadcast conversation whose members hold the card (audience)"),
    (13, "dashboard: logged-out session ids, each kept until its session expires"),
)
"""``(version, description)`` in the order they apply."""

SCHEMA_VERSION: Final = SCHEMA_HISTORY[-1][0]
"""The version a freshly opened store of this release is at."""


def with_sql(sql_by_version: dict[int, str]) -> list[tuple[int, str, str]]:
    """``(version, description, sql)`` for a backend whose SQL is ``sql_by_version``.

    Raises ``ValueError`` at import time if the backend lacks a version or has
    one the history does not know, so the backends cannot drift apart silently.
    """
    known = [version for version, _ in SCHEMA_HISTORY]
    if sorted(sql_by_version) != known:
        missing = sorted(set(known) - set(sql_by_version))
        extra = sorted(set(sql_by_version) - set(known))
        raise ValueError(
            f"migrations out of step with SCHEMA_HISTORY: missing {missing}, extra {extra}"
        )
    return [
        (version, description, sql_by_version[version]) for version, description in SCHEMA_HISTORY
    ]


def refuse_newer(where: object, applied: Iterable[int]) -> None:
    """Raise :class:`StoreTooNew` naming ``where`` if ``applied`` has versions not in the history.

    Such a database was migrated by a newer release; this one must not serve
    or migrate it, whichever engine holds it.
    """
    known = [version for version, _ in SCHEMA_HISTORY]
    unknown = [version for version in applied if version not in known]
    if unknown:
        raise StoreTooNew(
            where,
            f"written by a newer imserver (schema versions {unknown}; this release knows"
            f" up to {known[-1]})",
            "run the release that wrote it, or restore a backup made by this one",
        )
