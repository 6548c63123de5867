"""The clustered store: PostgreSQL through a pooled ``asyncpg`` connection set.

Several imserver nodes may open one database at once; everything that must
hold across them is enforced by the database (row locks, unique indexes,
``FOR UPDATE SKIP LOCKED`` leases, advisory locks), never by this process.
Writes go through one group-committing writer per node (``writer.py``);
reads take any pooled connection, so a read issued after a write returned
sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

from imserver.store.group_commit import CommitObserver
from imserver.store.postgres.apps import PgAppsMixin
from imserver.store.postgres.audit import PostgresAuditLog
from imserver.store.postgres.cards import PgCardsMixin
from imserver.store.postgres.dashboard import PgDashboardMixin
from imserver.store.postgres.dashboard_logouts import PgDashboardLogoutsMixin
from imserver.store.postgres.deadlines import PgDeadlinesMixin
from imserver.store.postgres.directory import PgDirectoryMixin
from imserver.store.postgres.governance import PgGovernanceMixin
from imserver.store.postgres.identity import PgIdentityMixin
from imserver.store.postgres.jobs import PgConn, T
from imserver.store.postgres.messages import PgMessagesMixin, insert_message
from imserver.store.postgres.outbox import PgOutboxMixin
from imserver.store.postgres.pool import (
    CONNECTION_LOST,
    PoolSettings,
    create_pool,
    describe_dsn,
    lost,
    unavailable,
)
from imserver.store.postgres.rotation import PgRotationMixin
from imserver.store.postgres.schema import migrate
from imserver.store.postgres.templates import PgTemplatesMixin
from imserver.store.postgres.writer import PgWriter

log = logging.getLogger(__name__)


class PostgresStore(
    PgMessagesMixin,
    PgAppsMixin,
    PgCardsMixin,
    PgOutboxMixin,
    PgDeadlinesMixin,
    PgDirectoryMixin,
    PgRotationMixin,
    PgIdentityMixin,
    PgGovernanceMixin,
    PgTemplatesMixin,
    PgDashboardMixin,
    PgDashboardLogoutsMixin,
):
    """``Store``, ``CardStore`` and ``DeadlineStore`` (and the rest) on PostgreSQL."""

    def __init__(
        self,
        dsn: str,
        *,
        min_pool: int = 2,
        max_pool: int = 10,
        group_commit_max: int = 512,
        audit_algorithm: str = "sha256",
    ) -> None:
        self._settings = PoolSettings(dsn, min_pool, max_pool)
        self._describe = describe_dsn(dsn)
        self._group_commit_max = group_commit_max
        self._pool: asyncpg.Pool | None = None
        self._writer: PgWriter | None = None
        self._on_commit: CommitObserver | None = None
        self._insert = insert_message
        #: In the same database, so a change and its audit record commit together.
        self.audit = PostgresAuditLog(self._write, self._read, algorithm=audit_algorithm)

    @property
    def describe(self) -> str:
        """``host:port/database`` (no password), for logs."""
        return self._describe

    # -- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        """Connect, migrate (one node at a time) and start the writer."""
        pool = await create_pool(self._settings)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, self._describe)
        except (OSError, asyncpg.InterfaceError) as e:
            await pool.close()
            raise unavailable(self._settings.dsn, e) from e
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._writer = PgWriter(pool, self._describe, batch=self._group_commit_max)
        self._writer.on_commit = self._on_commit
        self._writer.start()

    async def close(self) -> None:
        """Finish queued writes, then close the pool; safe to call twice."""
        writer, pool = self._writer, self._pool
        self._writer = self._pool = None
        if writer is not None:
            await writer.stop()
        if pool is not None:
            await pool.close()

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(transactions committed, jobs in them) — group-commit effectiveness."""
        if self._writer is None:
            return 0, 0
        return self._writer.batches, self._writer.jobs

    def observe_commits(self, observer: CommitObserver) -> None:
        """Tell ``observer`` of every committed write batch (the server's metrics)."""
        self._on_commit = observer
        if self._writer is not None:
            self._writer.on_commit = observer

    async def _write(self, fn: Callable[[PgConn], Awaitable[T]]) -> T:
        if self._writer is None:
            raise unavailable(self._settings.dsn, RuntimeError("the store is not open"))
        return await self._writer.run(fn)

    async def _read(self, fn: Callable[[PgConn], Awaitable[T]]) -> T:
        if self._pool is None:
            raise unavailable(self._settings.dsn, RuntimeError("the store is not open"))
        try:
            async with self._pool.acquire() as conn:  # may reconnect, and fail doing so
                try:
                    return await fn(conn)
                except CONNECTION_LOST:
                    conn.terminate()  # the pool must not hand this connection out again
                    raise
        except CONNECTION_LOST as e:
            raise lost(self._describe, e) from e
