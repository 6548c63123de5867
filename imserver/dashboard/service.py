"""What the dashboard shows, inside the viewer's admin scope: asked of the store, cached briefly.

Scope is enforced here, for every endpoint and the live feed alike, not in
the page: a scoped admin's unit must be inside one of their subtrees
(``AdminContext.require``, 403 ``forbidden``), and the figures that are
not per unit (callback outbox, DING totals, audit chain) are the operator's
only. Answers are cached for a few seconds per question, so ten wall
screens cost the store what one does.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from imserver.audit.chain import AuditRecord, VerifyResult
from imserver.directory.model import Unit
from imserver.errors import NoSuchUnit
from imserver.governance import classify
from imserver.http.admin_auth import AdminContext
from imserver.store.base import DashboardStore
from imserver.store.dashboard_records import UnitCardCounts

T = TypeVar("T")

UNITS_TTL_S = 2.0
GOVERNANCE_TTL_S = 30.0
AUDIT_VERIFY_TTL_S = 300.0
FAILED_SHOWN = 50
COST_FACTOR = 5.0


class AuditLog(Protocol):
    async def last(self) -> AuditRecord | None: ...

    async def verify(self) -> VerifyResult: ...


def unit_json(u: Unit) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "level": u.level, "path": u.path, "parent": u.parent}


def counts_json(c: UnitCardCounts) -> dict[str, Any]:
    return {
        **unit_json(c.unit),
        "people": c.people,
        "pushed": c.pushed,
        "decided": c.decided,
        "pending": c.pending,
        "todo": c.todo,
        "overdue": c.overdue,
        "oldest": None
        if c.oldest_card is None
        else {"card_id": c.oldest_card, "app_id": c.oldest_app, "created_at": c.oldest_at},
    }


@dataclass
class _Cache:
    entries: dict[Any, tuple[float, Any]] = field(default_factory=dict)  # key: (until, answer)

    async def get(self, key: Any, ttl: float, make: Callable[[], Awaitable[T]]) -> T:
        """``make()``'s answer, reused for ``ttl`` s -- or for ``COST_FACTOR`` times
        what it took to make, if longer: a question that costs the store a
        second is asked at most every five, however many screens watch."""
        now = time.monotonic()
        hit = self.entries.get(key)
        if hit is not None and now < hit[0]:
            value: T = hit[1]
            return value
        value = await make()
        done = time.monotonic()
        if len(self.entries) > 1000:  # bounded: drop everything stale
            self.entries = {k: v for k, v in self.entries.items() if done < v[0]}
        self.entries[key] = (done + max(ttl, COST_FACTOR * (done - now)), value)
        return value


def _scope_key(ctx: AdminContext) -> tuple[str, ...]:
    return ("*",) if ctx.super else tuple(sorted(s.path for s in ctx.scopes))


class DashboardService:
    """Per-unit card work, callbacks, DINGs, governance and audit, as JSON for the page."""

    def __init__(self, store: DashboardStore, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit
        self._cache = _Cache()

    async def units(self, ctx: AdminContext, unit_id: str | None) -> dict[str, Any]:
        """``unit_id``'s own counts and its children's (none: the viewer's top units).

        Raises ``NoSuchUnit`` (404) for an unknown id and ``Forbidden`` (403)
        for a unit outside the viewer's scope.
        """
        if unit_id is None:
            return await self._cache.get(
                ("top", _scope_key(ctx)), UNITS_TTL_S, lambda: self._top(ctx)
            )
        found = (await self._store.units_by_ids([unit_id])).get(unit_id)
        if found is None:
            raise NoSuchUnit(f"no unit {unit_id!r}")
        ctx.require(found)
        unit = found
        return await self._cache.get(("unit", unit.id), UNITS_TTL_S, lambda: self._below(ctx, unit))

    async def _top(self, ctx: AdminContext) -> dict[str, Any]:
        tops = await self._store.dashboard_children(None) if ctx.super else list(ctx.scopes)
        counts = await self._store.unit_card_counts(tops, int(time.time() * 1000))
        return {"unit": None, "trail": [], "children": [counts_json(c) for c in counts]}

    async def _below(self, ctx: AdminContext, unit: Unit) -> dict[str, Any]:
        children = await self._store.dashboard_children(unit.id)
        counts = await self._store.unit_card_counts([unit, *children], int(time.time() * 1000))
        ancestors = [p for p in unit.path.strip("/").split("/")[:-1] if p]
        known = await self._store.units_by_ids(ancestors) if ancestors else {}
        trail = [unit_json(known[a]) for a in ancestors if a in known and ctx.covers(known[a])]
        return {
            "unit": counts_json(counts[0]),
            "trail": trail,
            "children": [counts_json(c) for c in counts[1:]],
        }

    async def callbacks(self, ctx: AdminContext) -> dict[str, Any]:
        """The callback outbox per app and the newest failures (the operator's key only)."""
        ctx.require_super()
        # Two reads, not one snapshot: the list first, so the counts read after
        # it include every failure it shows (an entry only moves on to failed).
        failed = await self._store.list_callbacks("failed", FAILED_SHOWN)
        apps = await self._store.outbox_by_app()
        return {
            "apps": [
                {
                    "app_id": a.app_id,
                    "pending": a.pending,
                    "failed": a.failed,
                    "oldest_pending_at": a.oldest_pending_at,
                }
                for a in apps
            ],
            "failed": [
                {
                    "card_id": i.card_id,
                    "action_id": i.action_id,
                    "app_id": i.app_id,
                    "attempts": i.attempts,
                    "last_error": i.last_error,
                }
                for i in failed
            ],
        }

    async def overview(self, ctx: AdminContext) -> dict[str, Any]:
        """Governance counts inside the scope; DING and audit-chain status for the operator."""
        out: dict[str, Any] = {
            "governance": await self._cache.get(
                ("gov", _scope_key(ctx)), GOVERNANCE_TTL_S, lambda: self._governance(ctx)
            )
        }
        if ctx.super:
            d = await self._store.ding_counts()
            out["dings"] = {"total": d.total, "confirmed": d.confirmed, "awaiting": d.awaiting}
            out["audit"] = await self._audit_status()
        return out

    async def _governance(self, ctx: AdminContext) -> dict[str, int]:
        scope = None if ctx.super else [s.path for s in ctx.scopes]
        groups = await self._store.group_stats(scope)
        counts = {"groups": len(groups), "zombie": 0, "empty": 0, "duplicate": 0}
        for f in classify(groups, int(time.time() * 1000)):
            counts[f.kind] = counts.get(f.kind, 0) + 1
        return counts

    async def _audit_status(self) -> dict[str, Any]:
        head = await self._audit.last()
        checked = await self._cache.get(("audit",), AUDIT_VERIFY_TTL_S, self._verify)
        return {
            "head_seq": None if head is None else head.seq,
            "head_at": None if head is None else head.at,
            **checked,
        }

    async def _verify(self) -> dict[str, Any]:
        result = await self._audit.verify()
        return {
            "ok": result.ok,
            "checked": result.checked,
            "first_bad_seq": result.first_bad_seq,
            "reason": result.reason,
            "verified_at": int(time.time() * 1000),
        }
