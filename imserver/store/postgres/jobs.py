"""What a PostgreSQL store job is: an async function of one pooled connection.

Every job runs on a connection borrowed from the pool — the writer's inside a
savepoint of its group-commit transaction, a reader's on its own — so jobs
are typed against the pool's connection proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # generic only in the stubs, not at run time
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

PgConn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
PgJob: TypeAlias = Callable[[PgConn], Awaitable[Any]]
