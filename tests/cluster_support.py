"""N real ``python -m imserver serve`` nodes on one PostgreSQL schema and one Redis.

Issue #9's node-loss tests need *processes* (a ``kill -9`` must take the
node's leases, sockets and timers with it), so every node is a child process
on free loopback ports, with one config shared by all: the same store DSN,
Redis URL and channel prefix, ``auth.secret`` and field keys (docs/cluster.md).
Everything lives in one temporary directory that ``Cluster.close`` removes
together with the schema, even when the test failed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
from aiohttp import web

from imserver.store.postgres.store import PostgresStore
from imserver.tokens import TokenSigner
from tests.cards_support import ADMIN_KEY, BusinessStub
from tests.postgres_support import drop_schema, fresh_dsn
from tests.processes import REPO, free_port
from tests.redis_support import fresh_prefix

SECRET = "cluster-test-secret-" + "x" * 24
FIELD_KEYS = "k1:aes-256-gcm:" + base64.b64encode(b"k" * 32).decode()
FIELD_INDEX_KEY = base64.b64encode(b"i" * 32).decode()


def cluster_toml(dsn: str, redis_url: str, prefix: str) -> str:
    """The part of the config every node shares (ports and data dir are per node)."""
    return (
        '[store]\nbackend = "postgres"\n'
        f'dsn = "{dsn}"\npool_min_size = 1\npool_max_size = 4\n'
        f'[bus]\nbackend = "redis"\nredis_url = "{redis_url}"\nchannel_prefix = "{prefix}"\n'
        f'[auth]\nsecret = "{SECRET}"\nadmin_api_key = "{ADMIN_KEY}"\n'
        f'[security]\nfield_keys = "{FIELD_KEYS}"\nfield_key_active = "k1"\n'
        f'field_index_key = "{FIELD_INDEX_KEY}"\n'
        # A send storm must not hit the (shared) rate limits; they have their own tests.
        "[limits]\nuser_requests_per_s = 1e6\nuser_burst = 1000000\n"
        # callback_timeout_s bounds a callback's lease (timeout + 10 s): long enough for a
        # test to kill the node while the POST is in flight, short enough to wait out.
        "[cards]\ncallback_timeout_s = 2.0\ncallback_backoff_initial_s = 0.05\n"
        "callback_backoff_max_s = 0.2\ncallback_max_attempts = 6\n"
        "app_requests_per_s = 1e6\napp_burst = 1000000\n"
    )


class Node:
    """One ``imserver serve`` child process; its output goes to a log file."""

    def __init__(self, directory: Path, shared_toml: str) -> None:
        self.directory = directory
        self.ws_port, self.http_port = free_port(), free_port()
        self.config_path = directory / "node.toml"
        self.config_path.write_text(
            f"[server]\nws_port = {self.ws_port}\nhttp_port = {self.http_port}\n"
            f'data_dir = "{directory / "data"}"\nlog_level = "WARNING"\n' + shared_toml
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self._log = (self.directory / "node.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imserver", "serve", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.log_tail()
                try:
                    async with http.get(f"{self.http_url}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"node on {self.url} did not become ready:\n{self.log_tail()}")

    async def healthz(self) -> dict[str, Any]:
        """``GET /healthz`` (HTTP 200 also when degraded: the node still serves)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.http_url}/healthz") as response,
        ):
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body

    def log_tail(self) -> str:
        path = self.directory / "node.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill9(self) -> None:
        """``kill -9``: no socket is closed, no lease released, nothing flushed."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class Cluster:
    """``count`` nodes sharing a fresh PostgreSQL schema and a Redis channel prefix."""

    def __init__(self, count: int, redis_url: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="imserver-cluster-"))
        self.dsn, self.schema = fresh_dsn()
        self.redis_url = redis_url
        self.prefix = fresh_prefix()
        shared = cluster_toml(self.dsn, redis_url, self.prefix)
        self.nodes: list[Node] = []
        for i in range(count):
            node_dir = self.directory / f"node{i}"
            node_dir.mkdir()
            self.nodes.append(Node(node_dir, shared))
        self.signer = TokenSigner(SECRET)

    async def start(self, users: list[str]) -> None:
        """Create ``users`` (this also migrates the schema once), then start every node."""
        store = PostgresStore(self.dsn, min_pool=1, max_pool=2)
        await store.open()
        try:
            await store.upsert_users([(u, u) for u in users], 0)
        finally:
            await store.close()
        for node in self.nodes:
            node.start()
        await asyncio.gather(*(node.wait_ready() for node in self.nodes))

    def token(self, user: str, device: str = "pc") -> str:
        return self.signer.mint(user, device, 3600)

    def close(self) -> None:
        """Stop every node, drop the schema and remove the directory, whatever happened."""
        try:
            for node in self.nodes:
                node.stop()
        finally:
            try:
                drop_schema(self.schema)
            finally:
                shutil.rmtree(self.directory, ignore_errors=True)


def sender_pid(request: web.Request, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the client end of ``request``'s loopback connection.

    Linux only: the peer's port names a socket in ``/proc/net/tcp``, whose inode
    is among the file descriptors of exactly one process.
    """
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return None
    local = f"0100007F:{peer[1]:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError):  # the process is gone
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


class HoldingStub(BusinessStub):
    """A business system that can hold a callback request open until told to let go.

    Holding keeps the node that sent it inside its outbox lease: killing that
    node then leaves a leased entry behind, which only the lease's expiry frees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold_next = False
        #: Hold only a request sent by this process: any node may claim a due callback,
        #: so another node's request is refused with a 503 (a retry) and not held.
        self.hold_from_pid: int | None = None
        self.refused_for_hold: list[int | None] = []  # the sender pids refused that way
        self.held = asyncio.Event()  # a request is being held
        self.release = asyncio.Event()
        self.action_ids: list[str] = []  # every verified delivery, duplicates included

    async def _route(self, request: web.Request) -> web.StreamResponse:
        if self.hold_next and self.hold_from_pid is not None:
            sender = sender_pid(request, [self.hold_from_pid])
            if sender != self.hold_from_pid:
                self.refused_for_hold.append(sender)
                return web.Response(status=503, text="not the node this test holds")
        if self.hold_next:
            self.hold_next = False
            self.hits += 1
            self.held.set()
            await self.release.wait()
            return web.Response(status=500, text="held, then failed")
        response = await super()._route(request)
        if response.status == 200 and self.actions:
            self.action_ids.append(self.actions[-1].action_id)
        return response


class RedisServer:
    """A private ``redis-server`` on a free port, killable and restartable on that port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self) -> None:
        for _ in range(200):
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise AssertionError(f"redis-server on port {self.port} did not start")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


async def terminate_backends(dsn: str) -> int:
    """``pg_terminate_backend`` every other connection to ``dsn``'s database; how many.

    What a PostgreSQL restart or failover does to the nodes' pools, without
    touching the server every other test of the machine is using.
    """
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t"
        )
        return killed
    finally:
        await conn.close()
