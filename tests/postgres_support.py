"""A private PostgreSQL database for a test run, on the server of this machine.

One database ``imserver_test_<random>`` per test process, created on first
use as ``postgres`` on 127.0.0.1:5432 (override: ``IM_TEST_PG_DSN``, an
admin DSN) and dropped when the process exits; inside it, one schema per
test (``fresh_dsn``), so every test starts from an empty store and tests do
not see each other's rows.

PostgreSQL not reachable is a failure, never a skip: the message says how
to start it. (The variables are not named ``IMSERVER_*`` because the server
refuses unknown variables with that prefix.)
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_DSN_VAR = "IM_TEST_PG_DSN"
STORE_VAR = "IM_TEST_STORE"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL cannot be used; the message says how to fix that."""


def admin_dsn() -> str:
    return os.environ.get(ADMIN_DSN_VAR, DEFAULT_ADMIN_DSN)


def _with_database(dsn: str, database: str, query: str = "") -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", query, ""))


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a loop of its own, even from inside a running loop."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=main, name="pg-test-setup")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


async def _admin_execute(dsn: str, *statements: str) -> None:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise PostgresUnavailable(
            f"the PostgreSQL store tests need a server at {urlsplit(dsn).netloc} ({e}). Start"
            " it (`pg_ctlcluster 15 main start`, or `service postgresql start`) or point"
            f" {ADMIN_DSN_VAR} at one where you may CREATE DATABASE"
        ) from e
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


class _TestDatabase:
    """The process's database, created once (thread-safe) and dropped at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.name: str | None = None

    def ensure(self) -> str:
        with self._lock:
            if self.name is None:
                name = f"imserver_test_{secrets.token_hex(6)}"
                run_blocking(_admin_execute(admin_dsn(), f'CREATE DATABASE "{name}"'))
                self.name = name
                atexit.register(self.drop)
            return self.name

    def drop(self) -> None:
        if self.name is not None:
            name, self.name = self.name, None
            run_blocking(
                _admin_execute(admin_dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )


_DATABASE = _TestDatabase()


def fresh_dsn() -> tuple[str, str]:
    """``(dsn, schema)``: a new empty schema in the run's database, as the DSN's search_path."""
    database = _DATABASE.ensure()
    schema = f"t_{secrets.token_hex(6)}"
    run_blocking(_admin_execute(_with_database(admin_dsn(), database), f'CREATE SCHEMA "{schema}"'))
    return _with_database(admin_dsn(), database, f"search_path={schema}"), schema


def drop_schema(schema: str) -> None:
    """Drop one test's schema (its database stays for the other tests of the run)."""
    database = _DATABASE.ensure()
    run_blocking(
        _admin_execute(
            _with_database(admin_dsn(), database), f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'
        )
    )


def applied_migrations(dsn: str) -> list[int]:
    """The versions in the store's ``schema_migrations``, read on a connection of its own."""

    async def read() -> list[int]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            return [r[0] for r in rows]
        finally:
            await conn.close()

    return run_blocking(read())


def server_store_backend() -> str:
    """``sqlite`` (default) or ``postgres``: which store ``make_test_config`` gives servers."""
    return os.environ.get(STORE_VAR, "sqlite")
