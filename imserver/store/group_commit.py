"""Handing each job of a group commit its outcome, for every backend's writer.

Why shared: both writers (``store/sqlite/worker.py``, ``store/postgres/writer.py``)
commit a batch of jobs at once and must then resolve every awaiter the same
way — a job whose caller gave up (cancelled) is skipped, never resolved twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

#: Told of each committed batch: ``(seconds, jobs, waiting)`` -- the
#: transaction's duration, its jobs, and the jobs queued when it started (its
#: own included). May be called on the writer's thread (SQLite), so it must
#: be thread-safe; Prometheus histograms are (``Metrics.observe_commit``).
CommitObserver = Callable[[float, int, int], None]


class Awaited(Protocol):
    """A queued job: the future its caller awaits."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


def settle(outcomes: Sequence[tuple[Awaited, Any, BaseException | None]]) -> None:
    """Runs on the event loop: hand each job's ``(job, result, error)`` to its awaiter."""
    for job, result, error in outcomes:
        future = job.future
        if future.done():  # the awaiting task was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
