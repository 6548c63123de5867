"""What a sync derives for the address book: name search keys and head counts.

Kept beside the directory's own rows, in the same write transaction, so
queries read them from indexes instead of computing them per request.
"""

from __future__ import annotations

import sqlite3


def index_name(conn: sqlite3.Connection, user: str, name: str, *, fresh: bool) -> None:
    """The characters of ``name``, so "name contains" search starts from an index."""
    if not fresh:
        conn.execute("DELETE FROM user_name_chars WHERE user = ?", (user,))
    conn.executemany(
        "INSERT OR IGNORE INTO user_name_chars (ch, user) VALUES (?, ?)",
        [(ch, user) for ch in set(name)],
    )


def recount_unit_members(conn: sqlite3.Connection) -> None:
    """Store each unit's number of active people anywhere below it (``units.members``).

    Done once at the end of a sync that changed something, so browsing never
    counts: one pass over the memberships, each person counted once per unit.
    """
    below: dict[str, set[str]] = {}
    for user, path in conn.execute(
        "SELECT m.user, un.path FROM unit_members m JOIN units un ON un.id = m.unit"
        " JOIN users us ON us.id = m.user WHERE us.disabled = 0"
    ):
        for unit in path.strip("/").split("/"):
            below.setdefault(unit, set()).add(user)
    counts = {unit: len(users) for unit, users in below.items()}
    stale = [
        (counts.get(unit, 0), unit)
        for unit, have in conn.execute("SELECT id, members FROM units")
        if have != counts.get(unit, 0)
    ]
    conn.executemany("UPDATE units SET members = ? WHERE id = ?", stale)
