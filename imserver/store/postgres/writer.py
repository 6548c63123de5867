"""Group commit for PostgreSQL: every write that arrives while one commits shares the next.

Why not one transaction per call from the pool: each commit waits for a WAL
flush, so under load a node would spend its time in fsync. As the SQLite
writer does (``store/sqlite/worker.py``), this one drains its queue, runs each
batch in one transaction, commits once and then settles every job's future
in the same event-loop iteration. Should a job fail, the batch is run again
with each job in its own savepoint, so one failing job undoes only itself.

What changes with several nodes: a job may wait on a row another node has
locked, and two nodes' batches may deadlock (PostgreSQL aborts one statement)
or hit a serialization failure. Such a job is rolled back to its savepoint
and run again at the head of the next batch; the rest of the batch commits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from imserver.errors import StoreUnavailable
from imserver.store.group_commit import CommitObserver, settle
from imserver.store.postgres.jobs import PgConn, PgJob, RetryJob, T
from imserver.store.postgres.pool import CONNECTION_LOST, lost

log = logging.getLogger(__name__)


TRANSIENT: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, RetryJob)
"""Errors that say "try again", not "this job is wrong"."""
MAX_ATTEMPTS: Final = 5


@dataclass(slots=True)
class _Pending:
    fn: PgJob
    future: asyncio.Future[Any]
    attempts: int = 0


class PgWriter:
    """One pooled connection that runs write jobs in group-committed transactions."""

    def __init__(self, pool: asyncpg.Pool, describe: str, *, batch: int) -> None:
        self._pool = pool
        self._describe = describe
        self._batch = batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._redo: collections.deque[_Pending] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.jobs = 0
        #: Told of each committed batch (the server's metrics); None: nobody.
        self.on_commit: CommitObserver | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main(), name="pg-writer")

    async def run(self, fn: Callable[[PgConn], Awaitable[T]]) -> T:
        if self._closing or self._task is None or self._task.done():
            # After stop() a job would queue behind the stop marker and never run.
            raise StoreUnavailable("the PostgreSQL store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(fn, fut))
        return await fut

    async def stop(self) -> None:
        """Finish every job queued so far, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    def _drain_into(self, batch: list[_Pending]) -> bool:
        """Add queued jobs to ``batch`` up to the limit; True if the stop marker was met."""
        while len(batch) < self._batch:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if nxt is None:
                return True
            batch.append(nxt)
        return False

    async def _main(self) -> None:
        stopping = False
        while True:
            if self._redo:  # retried jobs go first, ahead of newer ones
                batch = list(self._redo)
                self._redo.clear()
            elif stopping:
                return
            else:
                first = await self._queue.get()
                if first is None:
                    return
                batch = [first]
            stopping = self._drain_into(batch) or stopping
            await self._run_batch(batch)

    @staticmethod
    async def _run_job(
        conn: PgConn,
        p: _Pending,
        outcomes: list[tuple[_Pending, Any, BaseException | None]],
        retry: list[_Pending],
    ) -> None:
        """Run one job in its own savepoint; a lost connection fails the whole batch."""
        try:
            async with conn.transaction():  # a savepoint
                result = await p.fn(conn)
        except CONNECTION_LOST:
            raise  # not the job's fault, and nothing after it can commit
        except TRANSIENT as e:
            p.attempts += 1
            if p.attempts >= MAX_ATTEMPTS:
                outcomes.append((p, None, e))
            else:
                log.info("postgres write job retried after %s", type(e).__name__)
                retry.append(p)
        except Exception as e:  # the job's own failure: undo just this job
            outcomes.append((p, None, e))
        else:
            outcomes.append((p, result, None))

    async def _run_batch(self, batch: list[_Pending]) -> None:
        """Commit ``batch``: first all at once, and only if a job fails, job by job.

        A savepoint per job costs two round trips (``SAVEPOINT``, ``RELEASE``)
        -- more than a whole one-statement append. Jobs rarely fail, so the
        batch first runs without them; if any job raises, that transaction is
        rolled back and the batch runs again with a savepoint per job, where
        the failing job undoes only itself. Jobs are database work only, so
        running one twice (the first time rolled back) is safe -- as it is for
        a transient retry.
        """
        waiting = len(batch) + self._queue.qsize()
        started = time.perf_counter()
        try:
            outcomes = await self._commit(batch, careful=False)
        except _JobFailed:
            outcomes = None
        except (*CONNECTION_LOST, asyncpg.PostgresError) as e:
            self._fail(batch, e)
            return
        retry: list[_Pending] = []
        if outcomes is None:
            try:
                outcomes = await self._commit(batch, careful=True, retry=retry)
            except (*CONNECTION_LOST, asyncpg.PostgresError) as e:
                self._fail(batch, e)
                return
        self.batches += 1
        self.jobs += len(outcomes)
        self._redo.extend(retry)
        settle(outcomes)
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started, len(outcomes), waiting)

    async def _commit(
        self, batch: list[_Pending], *, careful: bool, retry: list[_Pending] | None = None
    ) -> list[tuple[_Pending, Any, BaseException | None]]:
        """One transaction over ``batch``; without ``careful`` a failing job raises _JobFailed."""
        outcomes: list[tuple[_Pending, Any, BaseException | None]] = []
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    for p in batch:
                        if careful:
                            assert retry is not None
                            await self._run_job(conn, p, outcomes, retry)
                            continue
                        try:
                            result = await p.fn(conn)
                        except CONNECTION_LOST:
                            raise
                        except Exception as e:  # roll back; the careful pass says whose
                            raise _JobFailed from e
                        outcomes.append((p, result, None))
            except CONNECTION_LOST:
                conn.terminate()  # the pool must not hand this connection out again
                raise
        return outcomes

    def _fail(self, batch: list[_Pending], e: BaseException) -> None:
        # The transaction itself failed: nothing in this batch is durable.
        log.error("postgres write batch failed on %s: %s", self._describe, e)
        error = lost(self._describe, e)
        settle([(p, None, error) for p in batch])


class _JobFailed(Exception):
    """A job of an all-at-once batch raised: run the batch again, job by job."""
