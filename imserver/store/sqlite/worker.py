"""Threads that own SQLite connections and run jobs for the event loop.

Why by hand rather than ``aiosqlite``: a store must *group-commit* — run every
write that arrived while the previous commit was in flight in one transaction
and one fsync — and ``aiosqlite`` commits per call. The writer here drains its
queue, runs each job in its own SAVEPOINT (so one failing job does not undo the
others), commits once and then resolves every job's future. Readers run on a
second connection; WAL lets them proceed while the writer commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imserver.store.group_commit import CommitObserver, settle
from imserver.store.sqlite.jobs import Job, T

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    fn: Job
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


Outcome = tuple[_Pending, Any, BaseException | None]


def _resolve_all(outcomes: list[Outcome]) -> None:
    """Settle a whole batch with one wake-up of the event loop.

    One ``call_soon_threadsafe`` per batch rather than per job: fewer
    cross-thread wake-ups, and every task of a group commit resumes in the same
    loop iteration, so the hub can cork their fan-outs into one write per
    socket (imserver/hub.py).
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
            loop.call_soon_threadsafe(settle, mine)


def _resolve(p: _Pending, result: Any, error: BaseException | None) -> None:
    _resolve_all([(p, result, error)])


class SqliteThread:
    """One connection on one thread; ``batch`` > 1 turns on group commit."""

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        *,
        batch: int,
        write: bool,
    ) -> None:
        self._name = name
        self._connect = connect
        self._batch = batch
        self._write = write
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.batches = 0
        self.jobs = 0
        #: Told of each committed write batch (the server's metrics); None: nobody.
        self.on_commit: CommitObserver | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Pending(fn, fut, loop))
        return await fut

    def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as e:  # reported to start()'s caller
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < self._batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                if self._write:
                    self._run_write_batch(conn, batch)
                else:
                    for p in batch:
                        self._run_read(conn, p)
                if stop:
                    return
        finally:
            conn.close()

    def _run_read(self, conn: sqlite3.Connection, p: _Pending) -> None:
        try:
            result = p.fn(conn)
        except BaseException as e:
            _resolve(p, None, e)
        else:
            _resolve(p, result, None)

    def _run_write_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        outcomes: list[Outcome] = []
        waiting = len(batch) + self._queue.qsize()
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for p in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = p.fn(conn)
                except Exception as e:  # the job's own failure: undo just this job
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((p, None, e))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((p, result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            # The commit itself failed: nothing in this batch is durable.
            log.error("sqlite write batch failed: %s", e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _resolve_all([(p, None, e) for p in batch])
            return
        self.batches += 1
        self.jobs += len(batch)
        _resolve_all(outcomes)
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started, len(batch), waiting)
