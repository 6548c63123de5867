"""Opening the connection pool, with an error that says what to do when PostgreSQL is away."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import asyncpg

from imserver.errors import StoreUnavailable

CONNECT_TIMEOUT_S: Final = 10.0

CONNECTION_LOST: Final = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
)
"""Errors that mean the connection (or the server) went away, not that a request was wrong."""


@dataclass(slots=True, frozen=True)
class PoolSettings:
    dsn: str
    min_size: int = 2
    max_size: int = 10


def describe_dsn(dsn: str) -> str:
    """``host:port/database`` of ``dsn`` — never its password — for messages and logs."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    database = parts.path.lstrip("/") or parts.username or "postgres"
    return f"{host}:{port}/{database}"


def unavailable(dsn: str, error: BaseException) -> StoreUnavailable:
    """The error to raise when ``dsn`` cannot be used, naming the fix."""
    return StoreUnavailable(
        f"cannot use PostgreSQL at {describe_dsn(dsn)}: {type(error).__name__}: {error}."
        " Start PostgreSQL there (e.g. `pg_ctlcluster 15 main start`), create the database"
        " (`createdb -h HOST -U USER DATABASE`), or point [store] dsn /"
        " IMSERVER_STORE_DSN at a reachable server"
    )


def lost(describe: str, error: BaseException) -> StoreUnavailable:
    """What a request that met a lost connection fails with; retrying it is safe."""
    return StoreUnavailable(
        f"the database at {describe} is unavailable ({type(error).__name__}: {error}); retry"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset between borrowers: nothing beyond asyncpg's own rollback.

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` every time a connection goes back to the pool --
    one more round trip per read. The store leaves no session state behind:
    locks are ``pg_advisory_xact_lock``, settings are per transaction, nothing
    LISTENs; and an open transaction is still rolled back by asyncpg itself.
    """


async def create_pool(settings: PoolSettings) -> asyncpg.Pool:
    """An open pool on ``settings.dsn``; :class:`StoreUnavailable` if it cannot connect."""
    try:
        pool = await asyncpg.create_pool(
            settings.dsn,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=CONNECT_TIMEOUT_S,
            reset=_keep_session,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise unavailable(settings.dsn, e) from e
    assert pool is not None  # create_pool returns None only when awaited without init
    return pool
