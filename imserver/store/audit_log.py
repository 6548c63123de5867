"""What every backend's audit log does the same way around its own SQL.

Why shared: a log is built, appended to (inside a caller's transaction, or
as its own write job), paged and verified identically on SQLite and
PostgreSQL. Each backend (``store/*/audit.py``) supplies only the steps that
touch its database, as functions of a connection: ``extend_in`` (read the
head and insert the record sealed after it), ``last_in``, ``page_in`` and
``verify_in``. SQLite's run synchronously on the store's threads and
PostgreSQL's are coroutines; the store's runners accept either, so the
methods here serve both. The chain's rules are :mod:`imserver.audit.chain`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from imserver.audit.chain import (
    RECORD_COLUMNS,
    Anchor,
    AuditRecord,
    VerifyResult,
    record_from_row,
    require_known_algorithm,
    seal,
)

Runner = Callable[[Any], Awaitable[Any]]
"""Runs a job (a function of a connection) on the store and returns its result."""

Row = Iterable[Any]
"""A stored record: its columns in :data:`~imserver.audit.chain.RECORD_COLUMNS` order."""

SealNext = Callable[[Row | None], AuditRecord]
"""The record to insert after the head row (``None``: the log is empty), sealed by :func:`seal`."""

ConnT = TypeVar("ConnT")
"""The backend's connection type."""
SealedT = TypeVar("SealedT")
"""What ``append_in`` gives its caller: the record, or (PostgreSQL) an awaitable of it."""


class AuditLogBase(Generic[ConnT, SealedT]):
    """An audit log on a store's ``write`` and ``read`` runners."""

    extend_in: Callable[[ConnT, SealNext], SealedT]
    """The backend's: insert ``seal_next(head)`` on a connection, in the caller's transaction."""
    last_in: Callable[[ConnT], Any]
    """The backend's: the newest row on a connection, or ``None``."""
    page_in: Callable[[ConnT, int, int], Any]
    """The backend's: stored rows with seq > ``after_seq``, oldest first, at most ``limit``."""
    verify_in: Callable[[ConnT, Anchor | None], Any]
    """The backend's: :func:`~imserver.audit.chain.verify_rows` over every stored row."""

    def __init__(self, write: Runner, read: Runner, *, algorithm: str = "sha256") -> None:
        require_known_algorithm(algorithm)
        self._write = write
        self._read = read
        self.algorithm = algorithm
        """Algorithm for new records; changing it later is fine (each record states its own)."""

    def append_in(
        self,
        conn: ConnT,
        at: int,
        actor: str,
        action: str,
        target: str,
        details: dict[str, Any],
        algorithm: str | None = None,
    ) -> SealedT:
        """Seal and insert the next record on ``conn``, inside the caller's transaction.

        Meant to be called inside a store write job, so the record commits —
        or rolls back — with the change it describes; a job that fails after
        calling this leaves no record and so no hole in the chain.
        """
        chosen = algorithm or self.algorithm

        def seal_next(head: Row | None) -> AuditRecord:
            prev = None if head is None else record_from_row(head)
            return seal(prev, at, actor, action, target, details, chosen)

        return self.extend_in(conn, seal_next)

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
        head: Row | None = await self._read(self.last_in)
        return None if head is None else record_from_row(head)

    async def records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Up to ``limit`` records with seq > ``after_seq``, oldest first (for paging)."""
        rows: Iterable[Row] = await self._read(lambda conn: self.page_in(conn, after_seq, limit))
        return [record_from_row(row) for row in rows]

    async def verify(self, anchor: Anchor | None = None) -> VerifyResult:
        """Verify the whole chain as of one snapshot (and against ``anchor``, if given).

        Streams: the backend reads the rows in pages, so memory does not grow
        with the log; it occupies one read connection for the duration.
        """
        result: VerifyResult = await self._read(lambda conn: self.verify_in(conn, anchor))
        return result


@dataclass(frozen=True, slots=True)
class AuditStatements:
    """The log's table and statements for one backend: one column list for all of them."""

    table: str
    """``CREATE TABLE IF NOT EXISTS audit_log``: seq and ``at`` integers, the rest text."""
    newest: str
    """The newest row."""
    after: str
    """Rows with seq > the first parameter, oldest first."""
    page: str
    """:attr:`after`, at most the second parameter of them."""
    insert: str
    """One row, its values in column order."""


def audit_statements(
    integer: str, parameter: Callable[[int], str], at_check: str = ""
) -> AuditStatements:
    """The statements in a backend's integer type and parameter style (``?``, ``$1``).

    ``at_check`` is appended to the ``at`` column (SQLite's type check).
    """
    seq, at, *texts = RECORD_COLUMNS.split(", ")
    columns = [
        f"{seq:<11}{integer} PRIMARY KEY CHECK (seq >= 1)",
        f"{at:<11}{integer} NOT NULL{at_check}",
        *(f"{name:<11}TEXT NOT NULL" for name in texts),
    ]
    table = "CREATE TABLE IF NOT EXISTS audit_log (\n    " + ",\n    ".join(columns) + "\n)"
    select = f"SELECT {RECORD_COLUMNS} FROM audit_log"
    after = f"{select} WHERE seq > {parameter(1)} ORDER BY seq"
    values = ", ".join(parameter(n) for n in range(1, len(columns) + 1))
    return AuditStatements(
        table=table,
        newest=f"{select} ORDER BY seq DESC LIMIT 1",
        after=after,
        page=f"{after} LIMIT {parameter(2)}",
        insert=f"INSERT INTO audit_log ({RECORD_COLUMNS}) VALUES ({values})",
    )
