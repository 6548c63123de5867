"""What every backend's audit log does the same way around its own SQL.

Why shared: a log is built, appended to as its own write job and read back
identically on SQLite and PostgreSQL; each backend (``store/*/audit.py``)
supplies only ``append_in`` (the insert inside a caller's transaction) and
the jobs that read rows. The chain's rules are :mod:`imserver.audit.chain`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from imserver.audit.chain import AuditRecord, require_known_algorithm

Runner = Callable[[Any], Awaitable[Any]]
"""Runs a job (a function of a connection) on the store and returns its result."""


class AuditLogBase:
    """An audit log on a store's ``write`` and ``read`` runners."""

    append_in: Callable[..., Any]
    """The backend's: seal and insert the next record on a connection (see subclasses)."""
    last_in: Callable[[Any], Any]
    """The backend's: the newest record on a connection, or ``None``."""

    def __init__(self, write: Runner, read: Runner, *, algorithm: str = "sha256") -> None:
        require_known_algorithm(algorithm)
        self._write = write
        self._read = read
        self.algorithm = algorithm
        """Algorithm for new records; changing it later is fine (each record states its own)."""

    async def append(
        self,
        at: int,
        actor: str,
        action: str,
        target: str,
        details: dict[str, Any],
        algorithm: str | None = None,
    ) -> AuditRecord:
        """Append one record as its own write job (group-committed with others)."""
        job = partial(
            self.append_in,
            at=at,
            actor=actor,
            action=action,
            target=target,
            details=details,
            algorithm=algorithm,
        )
        record: AuditRecord = await self._write(job)
        return record

    async def last(self) -> AuditRecord | None:
        """The newest record (its hash is the head to anchor externally)."""
        result: AuditRecord | None = await self._read(self.last_in)
        return result
