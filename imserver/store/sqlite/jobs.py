"""What a SQLite store job is: a function of the connection, run on the writer's or the
reader's thread (``worker.py``); the mirror of ``store/postgres/jobs.py``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")

Job: TypeAlias = Callable[[sqlite3.Connection], Any]


class SqliteJobs:
    """How the mixins of ``SqliteStore`` run their jobs; the store defines both.

    Typed by the job, so a method ends ``return await self._read(job)``.
    """

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer thread, in a savepoint of its group commit."""
        raise NotImplementedError

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the reader thread."""
        raise NotImplementedError
