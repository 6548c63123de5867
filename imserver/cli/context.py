"""What every command shares: the config it reads, the store it opens, exit codes.

Commands open the store exactly as the server does (same file, durability
and start-up checks) so an operator's command never sees another database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imserver.config import Config, load_config
from imserver.log_format import setup_logging

if TYPE_CHECKING:
    from imserver.store.postgres import PostgresStore
    from imserver.store.postgres.jobs import PgConn
    from imserver.store.sqlite.store import SqliteStore

DEFAULT_CONFIG = Path("config/default.toml")

# Exit codes (docs/operations.md, "Exit codes"). 1 is a check that ran and
# found a problem (audit verify, store check); the others say why a command
# could not do its work at all.
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
EXIT_STORE_REFUSED = 3
EXIT_NO_DATABASE = 4
EXIT_STORE_UNAVAILABLE = 5  # store.backend = "postgres" and the database cannot be reached


def load(path: str | None) -> Config:
    """``--config``, else ``$IMSERVER_CONFIG``, else config/default.toml if present."""
    chosen = path or os.environ.get("IMSERVER_CONFIG")
    if chosen is None and DEFAULT_CONFIG.exists():
        chosen = str(DEFAULT_CONFIG)
    return load_config(chosen)


def setup_cli_logging(level: str, fmt: str = "text") -> None:
    setup_logging(level, fmt)  # text, or one JSON object per line (server.log_format)


def run_on_loop(coro: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    """Run ``coro`` on uvloop when asked for and installed, else on asyncio's loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            logging.getLogger("imserver").info("uvloop not installed; using asyncio's loop")
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


async def ensure_user(config: Config, user: str, name: str) -> None:
    """Create ``user`` (or rename them) in the configured store."""
    store = open_store(config)
    await store.open()
    try:
        await store.upsert_users([(user, name)], int(time.time() * 1000))
    finally:
        await store.close()


def open_store(config: Config) -> SqliteStore | PostgresStore:
    """The store as the server opens it: same file, durability and start-up checks."""
    if config.store.backend == "postgres":  # the database the nodes share
        from imserver.app import build_store

        return build_store(config)
    from imserver.store.sqlite.store import SqliteStore

    return SqliteStore(
        config.sqlite_file,
        synchronous=config.store.sqlite_synchronous,
        integrity_check=config.store.integrity_check,
    )


@asynccontextmanager
async def postgres_connection(config: Config) -> AsyncIterator[PgConn]:
    """One connection to the configured PostgreSQL for an operator command; migrates nothing.

    ``StoreUnavailable`` naming the host and the fix when it cannot connect,
    or when the connection is lost while the command runs.
    """
    from imserver.store.postgres.pool import (
        CONNECTION_LOST,
        PoolSettings,
        create_pool,
        describe_dsn,
        lost,
    )

    pool = await create_pool(PoolSettings(config.store.dsn, min_size=1, max_size=1))
    try:
        async with pool.acquire() as conn:
            yield conn
    except CONNECTION_LOST as e:
        pool.terminate()  # close() would wait on the lost connection
        raise lost(describe_dsn(config.store.dsn), e) from e
    except BaseException:
        pool.terminate()
        raise
    await pool.close()
