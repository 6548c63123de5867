"""Test helpers: a raw protocol client and a server harness on free ports.

The raw client speaks the wire protocol directly (no SDK) so bad-input tests
can send anything; the harness builds the same world as ``python -m imserver
serve`` with a temporary data dir and port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgpack
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from imserver.app import World, build_world, start_world, stop_world
from imserver.config import Config, load_config
from imserver_sdk import Client
from tests.postgres_support import fresh_dsn, server_store_backend
from tests.redis_support import server_bus_overrides


def make_test_config(data_dir: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    sections: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(data_dir), "ws_port": 0, "http_port": 0, "use_uvloop": False},
        "store": {"sqlite_synchronous": "NORMAL"},
        # Rate limits are tested on their own; elsewhere they must not interfere.
        "limits": {"user_requests_per_s": 1e6, "user_burst": 1_000_000},
        "cards": {"app_requests_per_s": 1e6, "app_burst": 1_000_000},
    }
    # IM_TEST_STORE=postgres: same tests, PostgreSQL -- unless the test names its own store
    # (``store={"backend": "sqlite"}`` for one that inspects SQLite, or its own DSN).
    pinned = (overrides or {}).get("store", {}).get("backend")
    if server_store_backend() == "postgres" and pinned is None:
        dsn, _schema = fresh_dsn()  # dropped with the run's database at exit
        sections["store"].update(backend="postgres", dsn=dsn, pool_min_size=1, pool_max_size=4)
    sections["bus"] = server_bus_overrides()  # IM_TEST_BUS=redis: same tests, Redis bus
    for name, values in (overrides or {}).items():
        sections.setdefault(name, {}).update(values)
    return load_config(None, env={}, overrides=sections)


class RawClient:
    """A bare WebSocket speaking imserver frames; for precise protocol tests."""

    def __init__(self, ws: ClientConnection, codec: str) -> None:
        self.ws = ws
        self.codec = codec
        self._next_id = 0
        #: Frames read while waiting for something else; ``recv`` returns them first.
        self.backlog: deque[dict[str, Any]] = deque()

    def encode(self, frame: dict[str, Any]) -> bytes | str:
        if self.codec == "msgpack":
            packed: bytes = msgpack.packb(frame, use_bin_type=True)
            return packed
        return orjson.dumps(frame).decode()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(self.encode(frame))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.popleft()
        return await self._recv_wire(timeout)

    async def _recv_wire(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.codec == "msgpack":
            assert isinstance(raw, bytes), "msgpack frames must be binary"
            out: dict[str, Any] = msgpack.unpackb(raw, raw=False)
            return out
        assert isinstance(raw, str), "json frames must be text"
        obj: dict[str, Any] = orjson.loads(raw)
        return obj

    async def recv_until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first frame matching ``pred``; other frames stay in the backlog."""
        for frame in self.backlog:
            if pred(frame):
                self.backlog.remove(frame)
                return frame
        deadline = time.monotonic() + timeout
        while True:
            frame = await self._recv_wire(max(0.01, deadline - time.monotonic()))
            if pred(frame):
                return frame
            self.backlog.append(frame)

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request; return its result or error frame (events are skipped)."""
        self._next_id += 1
        rid = self._next_id
        await self.send({"type": type_, "id": rid, **fields})
        return await self.recv_until(
            lambda f: f.get("type") in ("result", "error", "pong") and f.get("id") == rid
        )

    async def expect_close(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; return the close code."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()


class Harness:
    def __init__(self, world: World) -> None:
        self.world = world
        self._clients: list[Client] = []
        self._raws: list[RawClient] = []

    @property
    def url(self) -> str:
        return self.world.ws_url

    async def read_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """``sql`` (portable: both engines) on a connection of the test's own, not the store's.

        Bad-input tests count rows this way so a store bug cannot hide behind its own
        reads: a read-only SQLite file handle, or a fresh asyncpg connection to the DSN.
        """
        store = self.world.config.store
        if store.backend == "postgres":
            conn = await asyncpg.connect(store.dsn, timeout=10)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()
        uri = f"file:{self.world.config.sqlite_file}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as sqlite:
            return [tuple(r) for r in sqlite.execute(sql)]

    async def users(self, *names: str) -> None:
        await self.world.store.upsert_users([(n, n) for n in names], int(time.time() * 1000))

    def token(self, user: str, device: str = "d1", ttl: int = 3600) -> str:
        return self.world.signer.mint(user, device, ttl)

    async def client(
        self, user: str, device: str = "d1", codec: str = "json", **kwargs: Any
    ) -> Client:
        await self.users(user)
        kwargs.setdefault("backoff_initial", 0.05)
        kwargs.setdefault("backoff_max", 0.5)
        c = Client(self.url, self.token(user, device), codec=codec, **kwargs)
        await c.connect()
        self._clients.append(c)
        return c

    async def raw(
        self, user: str | None = None, device: str = "d1", codec: str = "json"
    ) -> RawClient:
        """A raw connection; authenticated as ``user`` if given."""
        subprotocols = [f"imserver.v1.{codec}"]
        ws = await connect(self.url, subprotocols=subprotocols, compression=None)  # type: ignore[list-item]
        raw = RawClient(ws, codec)
        self._raws.append(raw)
        if user is not None:
            await self.users(user)
            answer = await raw.request("auth", token=self.token(user, device))
            assert answer["type"] == "result", answer
        return raw

    async def close(self) -> None:
        for c in self._clients:
            await c.close()
        for r in self._raws:
            await r.close()


async def start_harness(config: Config) -> Harness:
    world = build_world(config)
    await start_world(world)
    return Harness(world)


async def stop_harness(h: Harness) -> None:
    await h.close()
    await stop_world(h.world)
