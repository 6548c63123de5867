"""SQLite side of group governance: the facts the classifier needs, per group.

A report is an occasional administrator request, so it reads every live
group in one job rather than keeping counters on the hot message path.
"""

from __future__ import annotations

import sqlite3

from imserver.governance import GroupStats
from imserver.store.sqlite.jobs import SqliteJobs

END = "\x7f"


class SqliteGovernanceMixin(SqliteJobs):
    async def group_stats(self, scope_paths: list[str] | None) -> list[GroupStats]:
        """Every live group whose unit (its owner's first unit) is inside ``scope_paths``.

        ``None``: every group, including those whose owner is in no unit.
        """

        def job(conn: sqlite3.Connection) -> list[GroupStats]:
            owner_unit: dict[str, str] = {}
            out = []
            groups = conn.execute(
                "SELECT id, name, owner, created_at FROM conversations"
                " WHERE kind = 'group' AND archived = 0 ORDER BY id"
            ).fetchall()
            for conv, name, owner, created_at in groups:
                if owner not in owner_unit:
                    (path,) = conn.execute(
                        "SELECT coalesce(min(u.path), '') FROM unit_members m"
                        " JOIN units u ON u.id = m.unit WHERE m.user = ?",
                        (owner,),
                    ).fetchone()
                    owner_unit[owner] = path
                path = owner_unit[owner]
                if scope_paths is not None and not any(
                    path and path.startswith(p) for p in scope_paths
                ):
                    continue
                count, last = conn.execute(
                    "SELECT count(*), max(ts) FROM messages"
                    " WHERE conv = ? AND kind NOT IN ('system', 'recall')",
                    (conv,),
                ).fetchone()
                members = frozenset(
                    r[0] for r in conn.execute("SELECT user FROM members WHERE conv = ?", (conv,))
                )
                out.append(
                    GroupStats(conv, name, path, owner or "", members, created_at, last, count)
                )
            return out

        return await self._read(job)
