"""Redis for the bus tests: the machine's single Redis, and a 3-master Redis Cluster.

The single Redis is expected on 127.0.0.1:6379 (override: ``IM_TEST_REDIS_URL``);
not reachable is a failure naming how to start it, never a skip. The
cluster is started by the tests themselves -- three ``redis-server
--cluster-enabled yes`` on free loopback ports in a temporary directory,
joined with ``redis-cli --cluster create`` -- and stopped and deleted at the
end of the session. Each test uses a channel prefix of its own, so tests
never hear each other.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.ports import CLUSTER_PORTS, bindable, free_port, pick_port

REDIS_URL_VAR = "IM_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class RedisUnavailable(RuntimeError):
    """The test Redis cannot be used; the message says how to fix that."""


def redis_url() -> str:
    return os.environ.get(REDIS_URL_VAR, DEFAULT_REDIS_URL)


def require_redis() -> str:
    """The single Redis's URL, after checking that it answers (fails loudly if not)."""
    url = redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as e:
        raise RedisUnavailable(
            f"the Redis bus tests need Redis >= 7 at {url} ({e}). Start it"
            " (`redis-server --daemonize yes`, or `service redis-server start`) or point"
            f" {REDIS_URL_VAR} at one"
        ) from e
    return url


BUS_VAR = "IM_TEST_BUS"


def server_bus_overrides() -> dict[str, object]:
    """``[bus]`` for ``make_test_config``: local, or (``IM_TEST_BUS=redis``) the Redis bus.

    Any integration test then runs its single node on the Redis bus, each
    server with a channel prefix of its own.
    """
    if os.environ.get(BUS_VAR, "local") != "redis":
        return {}
    return {"backend": "redis", "redis_url": require_redis(), "channel_prefix": fresh_prefix()}


def bus_settings(target: dict[str, Any]) -> dict[str, Any]:
    """The ``[bus]`` settings of a ``bus_target`` fixture value (its ``_`` keys dropped)."""
    return {k: v for k, v in target.items() if not k.startswith("_")}


def fresh_prefix() -> str:
    """A channel/key prefix of one test's own."""
    return f"imtest:{secrets.token_hex(4)}:"


def free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too (tests/ports.py)."""
    try:
        return pick_port(CLUSTER_PORTS, also=lambda port: bindable(port + 10000))
    except RuntimeError as e:
        raise RedisUnavailable(f"no free port pair (P, P + 10000) for a Redis node: {e}") from e


def _require_binaries() -> None:
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            raise RedisUnavailable(
                f"the Redis tests need {binary} on PATH (apt-get install redis-server)"
            )


@dataclass
class SingleRedis:
    """One extra ``redis-server`` on a free loopback port, e.g. with ``requirepass``.

    ``extra`` are more command-line settings (``["--user", "bob", "on", ">pw", ...]``).
    No persistence: it holds nothing the tests need after it stops.
    """

    password: str = ""
    extra: list[str] = field(default_factory=list)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        _require_binaries()
        self.port = free_port()
        auth = ["--requirepass", self.password] if self.password else []
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", *auth, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password or None)
        RedisCluster._wait(client.ping, f"redis-server on {self.port}")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def started_server(password: str = "", extra: list[str] | None = None) -> Iterator[SingleRedis]:
    """Body of a fixture: one extra Redis, always stopped at the end."""
    server = SingleRedis(password, extra or [])
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class RedisCluster:
    """Three masters on loopback; ``nodes`` as ``host:port`` strings for the config.

    With ``password`` every node has ``requirepass`` and ``masterauth`` set to it.
    """

    directory: Path
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    password: str = ""

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def start(self) -> None:
        _require_binaries()
        auth = ["--requirepass", self.password, "--masterauth", self.password]
        for _ in range(3):
            port = free_cluster_port()
            node_dir = self.directory / str(port)
            node_dir.mkdir()
            self.ports.append(port)
            self.processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node_dir / "nodes.conf"),
                        "--dir", str(node_dir),
                        "--save", "",
                        "--appendonly", "no",
                        *(auth if self.password else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in self.ports:
            self._wait(lambda p=port: self._client(p).ping(), f"redis-server on {port}")
        cli_auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        subprocess.run(
            ["redis-cli", *cli_auth, "--cluster", "create", *self.nodes, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            self._wait(
                lambda p=port: (
                    b"cluster_state:ok" in self._client(p).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                ),
                f"cluster state ok on {port}",
            )

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password or None)

    @staticmethod
    def _wait(check: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError as e:
                last = e
            time.sleep(0.05)
        raise RedisUnavailable(f"timed out waiting for {what} ({last})")

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def started_cluster(password: str = "") -> Iterator[RedisCluster]:
    """Body of the session fixture: start, hand out, always stop and delete."""
    directory = Path(tempfile.mkdtemp(prefix="imserver-redis-cluster-"))
    cluster = RedisCluster(directory, password=password)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def kill_bus_connections(addresses: list[str], node_name: str) -> int:
    """``CLIENT KILL`` one node's subscriber connections (named ``node_name``) everywhere.

    Stands for "this node's Redis link broke": what was published meanwhile
    must reach it after the reconnect, exactly once. ``addresses``:
    ``host:port`` of every Redis (one, or each cluster master).
    """
    killed = 0
    for address in addresses:
        host, _, port = address.rpartition(":")
        client = redis.Redis(host=host, port=int(port))
        for info in client.client_list():
            if info.get("name") == node_name:
                killed += int(client.client_kill_filter(_id=info["id"]))
        client.close()
    return killed


class DelayingProxy:
    """A TCP proxy to Redis that holds every client -> Redis chunk for ``delay_s``.

    Stands for a slow path to Redis: a command the node sent is processed
    that much later, while what Redis sends back arrives at once. Order is
    kept per connection.
    """

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self._upstream_port = upstream_port
        self._delay_s = delay_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        for pump in (
            self._pump(reader, up_writer, self._delay_s),
            self._pump(up_reader, writer, 0.0),
        ):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        releaser = asyncio.create_task(release())
        try:
            while True:
                chunk = await reader.read(65536)
                queue.put_nowait((loop.time() + delay_s, chunk))
                if not chunk:
                    break
            await releaser
        except (ConnectionError, asyncio.CancelledError):
            releaser.cancel()
            writer.close()
