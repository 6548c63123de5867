"""PostgreSQL side of group governance: the facts the classifier needs, per group.

One query with joins and aggregates instead of the SQLite store's per-group
lookups: across a network every round trip costs, and PostgreSQL plans it well.
"""

from __future__ import annotations

from imserver.governance import GroupStats
from imserver.store.postgres.jobs import PgConn, PgJobs

_GROUP_FACTS = """
SELECT c.id, c.name, c.owner, c.created_at,
       coalesce((SELECT min(u.path) FROM unit_members um JOIN units u ON u.id = um.unit
                 WHERE um."user" = c.owner), '') AS path,
       (SELECT count(*) FROM messages m
         WHERE m.conv = c.id AND m.kind NOT IN ('system', 'recall')) AS count,
       (SELECT max(m.ts) FROM messages m
         WHERE m.conv = c.id AND m.kind NOT IN ('system', 'recall')) AS last,
       coalesce((SELECT array_agg(mb."user") FROM members mb WHERE mb.conv = c.id), '{}') AS members
FROM conversations c
WHERE c.kind = 'group' AND NOT c.archived
ORDER BY c.id
"""


class PgGovernanceMixin(PgJobs):
    async def group_stats(self, scope_paths: list[str] | None) -> list[GroupStats]:
        """Every live group whose unit (its owner's first unit) is inside ``scope_paths``.

        ``None``: every group, including those whose owner is in no unit.
        """

        async def job(conn: PgConn) -> list[GroupStats]:
            out = []
            for r in await conn.fetch(_GROUP_FACTS):
                path = r["path"]
                if scope_paths is not None and not any(
                    path and path.startswith(p) for p in scope_paths
                ):
                    continue
                out.append(
                    GroupStats(
                        r["id"],
                        r["name"],
                        path,
                        r["owner"] or "",
                        frozenset(r["members"]),
                        r["created_at"],
                        r["last"],
                        r["count"],
                    )
                )
            return out

        return await self._read(job)
