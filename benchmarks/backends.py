"""The shared services a multi-node benchmark runs on: a throw-away PostgreSQL
database and a Redis key prefix of the run's own.

``--store postgres`` and ``--bus redis`` (and the ``cluster`` scenario) put
imserver on the PostgreSQL and Redis of this machine, exactly as
``config/cluster.toml`` would: every node of a run shares one database and one
channel prefix. The database is created empty before the run (the server
applies its migrations at start, as in production) and dropped after it,
even when the run failed, so runs never see each other's rows.

Both services are found at the addresses the test suite uses (override with
``IM_BENCH_PG_DSN`` — an admin DSN that may ``CREATE DATABASE`` — and
``IM_BENCH_REDIS_URL``). Not reachable is an error naming how to start them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.common import CpuSample, cpu_between, cpu_sample

PG_ADMIN_VAR = "IM_BENCH_PG_DSN"
REDIS_URL_VAR = "IM_BENCH_REDIS_URL"
DEFAULT_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Server settings a PostgreSQL number cannot be read without (recorded per run).
PG_SETTINGS = ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
#: Why a number on these services is not a one-core number (see README "How it measures").
UNPINNED_NOTES = {
    "postgres": "PostgreSQL's backend processes are not pinned: they may run on any CPU"
    " (the load side's too), and their CPU is not in the server's CPU figures",
    "redis": "redis-server is not pinned: it may run on any CPU (the load side's too),"
    " and its CPU is not in the server's CPU figures",
}


@dataclass(frozen=True, slots=True)
class Backends:
    """Where the server under test keeps state: empty strings mean the embedded default."""

    #: PostgreSQL DSN of the run's database; "" = the SQLite file in the data dir.
    dsn: str = ""
    #: Redis URL; "" = the in-process bus (one node only).
    redis_url: str = ""
    channel_prefix: str = ""
    #: Connections each node's pool may open (several nodes share one server).
    pool_max_size: int = 10
    #: The run's database name (to check it was dropped) and ``PG_SETTINGS``' values.
    database: str = ""
    postgres_settings: tuple[tuple[str, str], ...] = ()

    @property
    def store(self) -> str:
        return "postgres" if self.dsn else "sqlite"

    @property
    def bus(self) -> str:
        return "redis" if self.redis_url else "local"

    def toml(self) -> str:
        """The ``[store]``/``[bus]`` lines beyond the embedded default ("" for it)."""
        lines = []
        if self.dsn:
            lines += [
                'backend = "postgres"',
                f'dsn = "{self.dsn}"',
                f"pool_max_size = {self.pool_max_size}",
            ]
        bus = ""
        if self.redis_url:
            bus = (
                f'\n[bus]\nbackend = "redis"\nredis_url = "{self.redis_url}"\n'
                f'channel_prefix = "{self.channel_prefix}"\n'
            )
        return "\n".join(lines) + "\n" + bus

    def as_json(self) -> dict[str, Any]:
        """What a result records: which engines and their settings, never a password."""
        out: dict[str, Any] = {"store": self.store, "bus": self.bus}
        if self.dsn:
            out["postgres"] = urlsplit(self.dsn).hostname or ""
            out["database"] = self.database
            out["pool_max_size"] = self.pool_max_size
            out["postgres_settings"] = dict(self.postgres_settings)
        if self.redis_url:
            out["redis"] = urlsplit(self.redis_url).hostname or ""
            out["channel_prefix"] = self.channel_prefix
        notes = [UNPINNED_NOTES[k] for k in (self.store, self.bus) if k in UNPINNED_NOTES]
        if notes:
            out["notes"] = notes
        return out


#: The embedded default: the SQLite file and the in-process bus.
EMBEDDED = Backends()


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


async def _admin(dsn: str, statement: str) -> None:
    conn = await _connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _connect(dsn: str) -> Any:
    import asyncpg

    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise RuntimeError(
            f"--store postgres needs PostgreSQL at {urlsplit(dsn).netloc} ({e}): start it"
            " (`pg_ctlcluster 15 main start` or `service postgresql start`) or point"
            f" {PG_ADMIN_VAR} at a server where you may CREATE DATABASE"
        ) from e


async def _settings(dsn: str) -> tuple[tuple[str, str], ...]:
    """``PG_SETTINGS`` as the run's database sees them (``SHOW``)."""
    conn = await _connect(dsn)
    try:
        return tuple([(name, str(await conn.fetchval(f"SHOW {name}"))) for name in PG_SETTINGS])
    finally:
        await conn.close()


class BackendCpu:
    """CPU time of the PostgreSQL processes serving one database, over a window.

    Why polled and not two samples: the server's pool replaces connections
    while it runs (asyncpg retires one after 50,000 queries, every ~10,000
    appends here), and a process gone by the second sample would take its
    work with it. :meth:`poll` keeps each process's latest sample; a retired
    one loses only what it did after its last poll. Processes are found by
    their title (``postgres: … <database> host(port) …``), so the shared ones
    (WAL writer, checkpointer), which also serve other databases, are not
    counted. Without PostgreSQL (``database`` "") it measures nothing.
    """

    def __init__(self, database: str, interval_s: float = 0.25) -> None:
        self._needle = f" {database} ".encode() if database else b""
        self._interval = interval_s
        self._opened = 0.0
        self._polled = 0.0
        self._first: dict[int, CpuSample] = {}
        self._last: dict[int, CpuSample] = {}

    def start(self) -> None:
        """Open the window: what the processes alive now did before is not counted."""
        self._first.clear()
        self._last.clear()
        self._opened = time.monotonic()
        self._scan(baseline=True)

    def poll(self, force: bool = False) -> None:
        """Sample every backend of the database (at most once per interval unless forced)."""
        if force or time.monotonic() - self._polled >= self._interval:
            self._scan(baseline=False)

    def _scan(self, baseline: bool) -> None:
        if not self._needle:
            return
        self._polled = time.monotonic()
        for pid in self._pids():
            try:
                sample = cpu_sample(pid)
            except (OSError, ValueError):
                continue  # exited between the scan and the read
            # One that appears inside the window did all its work inside it.
            self._first.setdefault(pid, sample if baseline else CpuSample(self._opened, 0, 0, 0))
            self._last[pid] = sample

    def result(self) -> dict[str, Any] | None:
        """Close the window: CPU seconds of every backend seen in it (None without any)."""
        self.poll(force=True)
        if not self._last:
            return None
        user = system = 0.0
        for pid, end in self._last.items():
            used = cpu_between(self._first[pid], end)
            user += used["user_s"]
            system += used["sys_s"]
        wall = max(time.monotonic() - self._opened, 1e-9)
        return {
            "processes": len(self._last),
            "user_s": round(user, 3),
            "sys_s": round(system, 3),
            "cpu_s": round(user + system, 3),
            "utilisation": round((user + system) / wall, 3),
        }

    def _pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read(512)
            except OSError:
                continue
            if title.startswith(b"postgres: ") and self._needle in title:
                pids.append(int(entry))
        return pids


def _flush_prefix(url: str, prefix: str) -> None:
    """Delete the run's keys (rate buckets, presence): pub/sub itself leaves nothing."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def _require_redis(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as e:
        raise RuntimeError(
            f"--bus redis needs Redis at {url} ({e}): start it (`redis-server --daemonize"
            f" yes` or `service redis-server start`) or set {REDIS_URL_VAR}"
        ) from e


@contextlib.contextmanager
def provisioned(
    store: str = "sqlite", bus: str = "local", pool_max_size: int = 10
) -> Iterator[Backends]:
    """The :class:`Backends` for ``store``/``bus``, created now and removed on exit."""
    tag = secrets.token_hex(4)
    dsn = redis_url = prefix = ""
    admin = os.environ.get(PG_ADMIN_VAR, DEFAULT_PG_ADMIN_DSN)
    database = f"imserver_bench_{tag}"
    settings: tuple[tuple[str, str], ...] = ()
    if store == "postgres":
        asyncio.run(_admin(admin, f'CREATE DATABASE "{database}"'))
        dsn = _with_database(admin, database)
    if bus == "redis":
        redis_url = os.environ.get(REDIS_URL_VAR, DEFAULT_REDIS_URL)
        _require_redis(redis_url)
        prefix = f"imbench:{tag}:"
    try:
        if dsn:
            settings = asyncio.run(_settings(dsn))
        yield Backends(dsn, redis_url, prefix, pool_max_size, database if dsn else "", settings)
    finally:
        if dsn:
            asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if redis_url:
            _flush_prefix(redis_url, prefix)
