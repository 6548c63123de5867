"""Values the operations dashboard reads from the store (both backends return these).

Kept apart from ``records.py``: they are read-only summaries for one page,
computed by aggregate queries, never written back.
"""

from __future__ import annotations

from dataclasses import dataclass

from imserver.directory.model import Unit

MAX_DASHBOARD_UNITS = 200
"""Most units one per-unit query covers (a unit's children, or an admin's scopes)."""


@dataclass(slots=True, frozen=True)
class UnitCardCounts:
    """Card work of everyone in one unit's subtree (a person in two units counts in both).

    ``pushed``: distinct cards someone in the subtree holds; ``decided``: of
    those, cards no longer open (approved, rejected, closed); ``pending``:
    distinct cards still waiting for someone in the subtree; ``todo``: the
    todo backlog, one item per (person, card); ``overdue``: todo items past
    their deadline; ``oldest_*``: the todo item created longest ago.
    """

    unit: Unit
    people: int
    pushed: int
    decided: int
    pending: int
    todo: int
    overdue: int
    oldest_card: str | None
    oldest_app: str | None
    oldest_at: int | None


@dataclass(slots=True, frozen=True)
class AppOutbox:
    """One app's callback outbox: how much is waiting and how much gave up."""

    app_id: str
    pending: int
    failed: int
    oldest_pending_at: int | None


@dataclass(slots=True, frozen=True)
class DingCounts:
    """DING recipients: ``total`` rows, ``confirmed`` of them, ``awaiting`` re-notification."""

    total: int
    confirmed: int
    awaiting: int
