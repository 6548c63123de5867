"""What a PostgreSQL store job is: an async function of one pooled connection.

Every job runs on a connection borrowed from the pool — the writer's inside a
savepoint of its group-commit transaction, a reader's on its own — so jobs
are typed against the pool's connection proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:  # generic only in the stubs, not at run time
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

T = TypeVar("T")

PgConn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
PgJob: TypeAlias = Callable[[PgConn], Awaitable[Any]]


class RetryJob(Exception):
    """Raised inside a writer job: undo it and run it again in the next batch.

    For a race the job can only resolve once the other side has committed
    (e.g. another node stored the same ``client_msg_id`` after our lookup).
    """


class PgJobs:
    """How the mixins of ``PostgresStore`` run their jobs; the store defines both.

    Typed by the job, so a method ends ``return await self._read(job)`` rather
    than restating its result type on a ``result: ...`` line.
    """

    async def _write(self, fn: Callable[[PgConn], Awaitable[T]]) -> T:
        """Run ``fn`` on the group-committing writer, in a savepoint of its transaction."""
        raise NotImplementedError

    async def _read(self, fn: Callable[[PgConn], Awaitable[T]]) -> T:
        """Run ``fn`` on any pooled connection."""
        raise NotImplementedError
