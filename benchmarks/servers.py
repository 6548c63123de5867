"""The servers under test, each a real child process on free loopback ports.

``imserver`` is started exactly as an operator would (``python -m imserver
serve --config FILE``) with a benchmark configuration: a throw-away data
directory, rate limits out of the way and generous buffers, so the numbers
measure the message path and not the protections. The baseline
(``benchmarks/baselines/ws_broadcast.py``) is started the same way, so both
pay the same interpreter, event loop and socket costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.backends import EMBEDDED, Backends, provisioned
from benchmarks.common import REPO, Pinning, pin_process_tree, raise_nofile_limit

#: Subprotocol both servers are spoken to with (the baseline ignores it).
SUBPROTOCOL = "imserver.v1.json"
TOKEN_TTL_S = 24 * 3600
DEVICE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(slots=True)
class ServerHandle:
    """A running server process and how to reach it."""

    name: str
    proc: subprocess.Popen[bytes]
    ws_port: int
    log_path: Path
    pinned: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )


def imserver_config(
    data_dir: Path,
    ws_port: int,
    http_port: int,
    *,
    synchronous: str,
    max_group_members: int,
    secret: str,
    admin_api_key: str = "",
    backends: Backends = EMBEDDED,
) -> str:
    """The TOML the benchmark runs imserver with (see README: "Server configuration").

    ``backends``: the embedded default, or the PostgreSQL database and Redis
    prefix every node of a multi-node run shares (``benchmarks/backends.py``).
    """
    # The admin HTTP API (registering apps) only where a scenario needs it.
    admin = f'admin_api_key = "{admin_api_key}"\n' if admin_api_key else ""
    return f"""\
[server]
host = "127.0.0.1"
ws_port = {ws_port}
http_port = {http_port}
data_dir = "{data_dir}"
log_level = "WARNING"
use_uvloop = true

[store]
sqlite_synchronous = "{synchronous}"
{backends.toml()}
[auth]
secret = "{secret}"
token_ttl_s = {TOKEN_TTL_S}
{admin}
[limits]
# Rate limits have their own tests; a benchmark must never hit them.
user_requests_per_s = 1e9
user_burst = 1000000000
max_group_members = {max_group_members}

[gateway]
# Generous: a burst of fan-out must not close the load generator (4008).
send_buffer_limit_bytes = 268435456
# Members only listen; they must not be closed as idle during a long sweep.
idle_timeout_s = 86400.0
# The load generator is one host with thousands of sockets: no connection caps.
max_connections = 0
max_connections_per_ip = 0

[http]
max_connections = 0
max_connections_per_ip = 0

[cards]
app_requests_per_s = 1e9
app_burst = 1000000000
"""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node's config file and ports (several share one store and bus)."""

    config_path: Path
    ws_port: int
    http_port: int


@dataclass(slots=True)
class Provisioned:
    config_path: Path
    tokens: dict[str, str]
    #: Every node's config; ``nodes[0]`` is ``config_path``.
    nodes: list[NodeConfig] = field(default_factory=list)


def provision_imserver(
    workdir: Path,
    users: list[str],
    *,
    synchronous: str,
    max_group_members: int,
    admin_api_key: str = "",
    backends: Backends = EMBEDDED,
    nodes: int = 1,
) -> tuple[Provisioned, int, int]:
    """Write the config, create ``users`` and mint their tokens before the server starts.

    This does in-process what ``python -m imserver token --user U --device D``
    does per user (upsert the user in the store, sign a token with the same
    secret): running that CLI 1,000 times would take minutes. ``nodes`` > 1
    writes one config per node (own ports and data directory, the same store,
    bus and secret); that needs ``backends`` with PostgreSQL and Redis.
    Returns the first node's ports.
    """
    from imserver.app import build_store
    from imserver.config import load_config
    from imserver.tokens import TokenSigner

    if nodes > 1 and (backends.store != "postgres" or backends.bus != "redis"):
        raise ValueError("several nodes need a shared store and bus (PostgreSQL and Redis)")
    secret = secrets.token_hex(32)
    configs: list[NodeConfig] = []
    for i in range(nodes):
        data_dir = workdir / ("data" if i == 0 else f"data-{i}")
        data_dir.mkdir(parents=True, exist_ok=True)
        ws_port, http_port = free_port(), free_port()
        config_path = workdir / ("imserver.toml" if i == 0 else f"imserver-{i}.toml")
        config_path.write_text(
            imserver_config(
                data_dir,
                ws_port,
                http_port,
                synchronous=synchronous,
                max_group_members=max_group_members,
                secret=secret,
                admin_api_key=admin_api_key,
                backends=backends,
            )
        )
        configs.append(NodeConfig(config_path, ws_port, http_port))
    config = load_config(configs[0].config_path, env={})

    async def create() -> None:
        store = build_store(config)  # PostgreSQL: applies the migrations, as a node would
        await store.open()
        try:
            now_ms = int(time.time() * 1000)
            for i in range(0, len(users), 1000):
                await store.upsert_users([(u, u) for u in users[i : i + 1000]], now_ms)
        finally:
            await store.close()

    asyncio.run(create())
    signer = TokenSigner(secret)
    tokens = {u: signer.mint(u, DEVICE, TOKEN_TTL_S) for u in users}
    first = configs[0]
    return Provisioned(first.config_path, tokens, configs), first.ws_port, first.http_port


@contextlib.contextmanager
def workspace(
    scenario: str, store: str = "sqlite", bus: str = "local", pool_max_size: int = 10
) -> Iterator[tuple[Path, Backends]]:
    """A temporary directory for a server's config, data and log, and its store and bus.

    What ``--store``/``--bus`` name is created here (a throw-away PostgreSQL
    database, a Redis prefix) and removed on exit, after the directory's
    server must have been stopped; pass the ``Backends`` to
    :func:`provision_imserver` and record ``backends.as_json()``.
    """
    with (
        tempfile.TemporaryDirectory(prefix=f"imserver-bench-{scenario}-") as tmp,
        provisioned(store, bus, pool_max_size) as backends,
    ):
        yield Path(tmp), backends


PR_SET_PDEATHSIG = 1


def _child_setup(cpus: frozenset[int]) -> Callable[[], None]:
    """Runs in the child between fork and exec (Linux; each step optional).

    * ``PR_SET_PDEATHSIG``: the server gets SIGTERM if the orchestrator dies,
      even by SIGKILL, so no server outlives an interrupted benchmark.
    * CPU affinity: set before the interpreter starts, so every thread the
      server ever starts (SQLite writer and reader) inherits it.
    * Open files: the soft ``RLIMIT_NOFILE`` raised to the hard limit (the
      orchestrator's raised limit is inherited anyway; this makes sure), so
      ``connect`` can hold 10,000 sockets.
    """

    def setup() -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        raise_nofile_limit()
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)

    return setup


def _spawn(
    name: str, argv: list[str], log_path: Path, ws_port: int, pinning: Pinning
) -> ServerHandle:
    # IMSERVER_* variables would silently override the benchmark config.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSERVER_")}
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # preexec_fn is only unsafe when the parent runs threads; the
            # orchestrator has none when it starts a server.
            preexec_fn=_child_setup(pinning.server),
        )
    finally:
        log.close()
    return ServerHandle(name, proc, ws_port, log_path, _pinned_to(proc.pid, pinning.server))


def _pinned_to(pid: int, cpus: frozenset[int]) -> bool:
    if not cpus:
        return False
    try:
        return os.sched_getaffinity(pid) == cpus
    except OSError:
        return False


def _wait_port(handle: ServerHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        handle.check_alive()
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", handle.ws_port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{handle.name} did not listen on {handle.ws_port} in {timeout}s")


def start_imserver(
    workdir: Path,
    config_path: Path,
    ws_port: int,
    http_port: int,
    pinning: Pinning,
    *,
    name: str = "imserver",
) -> ServerHandle:
    """Start one node and wait until ``/healthz`` answers 200; ``name`` names its log."""
    handle = _spawn(
        name,
        [sys.executable, "-m", "imserver", "serve", "--config", str(config_path)],
        workdir / f"{name}.log",
        ws_port,
        pinning,
    )
    deadline = time.monotonic() + 30
    url = f"http://127.0.0.1:{http_port}/healthz"
    while True:
        handle.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop(handle)
            raise RuntimeError(f"{name} not healthy in 30s; log tail:\n{handle.log_tail()}")
        time.sleep(0.05)
    _wait_port(handle, 10)
    if pinning.enabled:  # belt and braces: every thread, now that they exist
        handle.pinned = pin_process_tree(handle.pid, pinning.server) and handle.pinned
    return handle


def start_baseline(workdir: Path, pinning: Pinning, *, raw_frames: bool = False) -> ServerHandle:
    """The ``websockets.broadcast`` baseline, or with ``raw_frames`` the write floor."""
    port = free_port()
    name = "floor" if raw_frames else "baseline"
    cmd = [sys.executable, "-m", "benchmarks.baselines.ws_broadcast", "--port", str(port)]
    handle = _spawn(
        name,
        [*cmd, "--raw-frames"] if raw_frames else cmd,
        workdir / f"{name}.log",
        port,
        pinning,
    )
    _wait_port(handle, 30)
    if pinning.enabled:
        handle.pinned = pin_process_tree(handle.pid, pinning.server) and handle.pinned
    return handle


def metric_value(http_port: int, name: str, timeout: float = 5.0) -> float | None:
    """One unlabelled sample from imserver's ``/metrics`` (e.g. ``imserver_connections``)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def stop(handle: ServerHandle) -> None:
    """SIGTERM, then SIGKILL if it does not exit within 10 s."""
    if handle.proc.poll() is None:
        handle.proc.terminate()
        try:
            handle.proc.wait(10)
        except subprocess.TimeoutExpired:
            handle.proc.kill()
            handle.proc.wait(5)


@contextlib.contextmanager
def running(handle: ServerHandle) -> Iterator[ServerHandle]:
    try:
        yield handle
    finally:
        stop(handle)
