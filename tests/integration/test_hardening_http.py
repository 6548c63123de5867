"""Issue #12 items 4, 9 and 11: slow clients, connection caps, JSON errors, file headers.

Everything runs against a real server on loopback with raw TCP sockets where
the HTTP client library would hide what is on the wire (trickled request
heads, malformed request lines, the bytes of a refusal). Per-address caps are
exercised from distinct loopback source addresses (127.0.0.2, 127.0.0.3, …),
which Linux routes to the loopback interface without any set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol
from yarl import URL

from imserver.app import build_world, start_world, stop_world
from imserver.tokens import TokenSigner
from tests.cards_support import ADMIN_KEY
from tests.processes import REPO, free_port
from tests.support import Harness, make_test_config

StartServer = Callable[..., Awaitable[Harness]]
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# --------------------------------------------------------------------------- raw sockets


async def connect_from(port: int, source_ip: str = "127.0.0.1") -> Stream:
    """A TCP connection to the server whose source address is ``source_ip``."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source_ip, 0))


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes; TimeoutError if it keeps the socket."""
    chunks: list[bytes] = []

    async def read_all() -> None:
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)

    await asyncio.wait_for(read_all(), timeout)
    return b"".join(chunks)


async def trickle(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    """Send ``data`` one byte at a time (a slowloris client), until done or cut off."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(interval)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_json_error(raw: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = parse_response(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), headers
    error: dict[str, str] = orjson.loads(body)["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return headers


async def get_healthz(port: int, source_ip: str = "127.0.0.1") -> bytes:
    """One ``GET /healthz`` on a fresh raw connection (closed by the server after it)."""
    reader, writer = await connect_from(port, source_ip)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    try:
        return await read_until_closed(reader, 10)
    finally:
        writer.close()


async def close_all(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()
    for _, writer in streams:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def refused(h: Harness, port: str, code: str) -> float:
    """The ``imserver_connections_refused_total`` sample for ``port`` and ``code``."""
    value = h.world.metrics.registry.get_sample_value(
        "imserver_connections_refused_total", {"port": port, "code": code}
    )
    return value or 0.0


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, "fd limit too low"


# --------------------------------------------------------------------------- HTTP: slow clients


async def test_trickled_request_head_is_cut_off_at_header_timeout(
    start_server: StartServer,
) -> None:
    h = await start_server(http={"header_timeout_s": 1.0})
    reader, writer = await connect_from(h.world.http_port)
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200  # 50 s at 4 bytes/s
    started = time.monotonic()
    sender = asyncio.create_task(trickle(writer, head, 0.25))
    raw = await read_until_closed(reader, 6)  # cut off long before the head could end
    assert time.monotonic() - started >= 0.9  # ...but not before its bound
    assert not sender.done(), "the client was still sending when it was cut off"
    sender.cancel()
    writer.close()
    assert_json_error(raw, 408, "request_timeout")
    assert refused(h, "http", "request_timeout") == 1


async def test_header_timeout_does_not_cut_a_slow_upload_body(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """The bound is for the request head only: a body may take its time."""
    h = await start_server(http={"header_timeout_s": 0.5})
    await h.users("alice")

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(4):
            await asyncio.sleep(0.4)
            yield b"x" * 1000

    headers = {"Authorization": f"Bearer {h.token('alice', 'web')}", "Content-Type": "text/plain"}
    async with http.post(
        f"{h.world.http_url}/api/v1/files",
        params={"name": "slow.txt"},
        data=slow_body(),
        headers=headers,
    ) as resp:
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["size"] == 4000


async def test_silent_connection_is_closed_at_header_timeout(start_server: StartServer) -> None:
    h = await start_server(http={"header_timeout_s": 1.0})
    reader, writer = await connect_from(h.world.http_port)
    assert await read_until_closed(reader, 6) == b""  # closed, with no unasked-for answer
    writer.close()


async def test_idle_keepalive_connection_and_slow_next_request_are_closed(
    start_server: StartServer,
) -> None:
    h = await start_server(http={"keepalive_timeout_s": 1.0, "header_timeout_s": 30.0})
    reader, writer = await connect_from(h.world.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # HTTP/1.1: keep-alive
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers, _ = parse_response(head)
    assert status == 200
    await reader.readexactly(int(headers["content-length"]))
    # Idle after the response: closed after the keep-alive bound, nothing sent.
    assert await read_until_closed(reader, 6) == b""
    writer.close()

    # A next request that trickles in is held to the same bound.
    reader, writer = await connect_from(h.world.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    sender = asyncio.create_task(trickle(writer, b"GET /healthz HTTP/1.1\r\n" * 10, 0.25))
    await read_until_closed(reader, 6)
    assert not sender.done()
    sender.cancel()
    writer.close()


async def test_per_address_cap_refuses_with_json_503_and_frees_on_close(
    start_server: StartServer,
) -> None:
    h = await start_server(http={"max_connections_per_ip": 3})
    port = h.world.http_port
    held = [await connect_from(port, "127.0.0.2") for _ in range(3)]
    reader, writer = await connect_from(port, "127.0.0.2")
    headers = assert_json_error(await read_until_closed(reader, 5), 503, "too_many_connections")
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    writer.close()
    assert refused(h, "http", "too_many_connections") == 1  # operators can see it
    # Another address is not affected.
    assert parse_response(await get_healthz(port, "127.0.0.3"))[0] == 200
    # Closing one of the held connections gives its slot back.
    await close_all(held[:1])
    deadline = time.monotonic() + 5
    while parse_response(await get_healthz(port, "127.0.0.2"))[0] != 200:
        assert time.monotonic() < deadline, "slot never released"
        await asyncio.sleep(0.05)
    await close_all(held[1:])


async def test_total_cap_refuses_with_json_503(start_server: StartServer) -> None:
    h = await start_server(http={"max_connections": 4, "max_connections_per_ip": 0})
    port = h.world.http_port
    held = [await connect_from(port, f"127.0.0.{10 + i}") for i in range(4)]
    assert_json_error(await get_healthz(port, "127.0.0.20"), 503, "too_many_connections")
    await close_all(held)


@pytest.mark.slow
async def test_thousand_trickling_clients_do_not_starve_healthz_or_websockets(
    start_server: StartServer,
) -> None:
    """1,000 slowloris sockets on each port (one byte a second); the server keeps answering."""
    per_address, addresses = 100, [f"127.0.0.{i}" for i in range(2, 12)]
    raise_fd_limit(4 * per_address * len(addresses) + 1024)
    h = await start_server(
        http={"header_timeout_s": 120.0, "max_connections_per_ip": per_address},
        gateway={"open_timeout_s": 120.0, "max_connections_per_ip": per_address},
    )
    slow: list[Stream] = []
    for port in (h.world.http_port, h.world.ws_port):
        for ip in addresses:
            slow += await asyncio.gather(*(connect_from(port, ip) for _ in range(per_address)))
    for _, writer in slow:
        writer.write(b"GET / HTTP/1.1\r\n")

    async def one_byte_a_second() -> None:
        while True:
            for _, writer in slow:
                if not writer.is_closing():
                    writer.write(b"X")
            await asyncio.sleep(1.0)

    dripping = asyncio.create_task(one_byte_a_second())
    try:
        await asyncio.sleep(1.5)
        # Every trickler is held open by the server...
        assert h.world.gateway.connection_limiter.total >= len(addresses) * per_address
        runner = h.world.http_runner
        assert runner is not None and runner.server is not None
        assert len(runner.server.connections) >= len(addresses) * per_address
        # ...more from the same addresses are refused at once...
        extra = await get_healthz(h.world.http_port, addresses[0])
        assert_json_error(extra, 503, "too_many_connections")
        # ...and everyone else is served: /healthz, and a new WebSocket that authenticates.
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{h.world.http_url}/healthz") as resp,
        ):
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        alice = await h.raw("alice")  # asserts the auth result
        assert (await alice.request("ping"))["type"] == "pong"
    finally:
        dripping.cancel()
        await close_all(slow)


@pytest.mark.slow
async def test_slowloris_cannot_exhaust_the_servers_file_descriptors(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The issue's scenario: 1,100 held sockets against a process with 1,024 files.

    Without caps every trickler is accepted until ``accept()`` fails with
    EMFILE, and then nobody gets in — not /healthz, not a WebSocket. With a
    per-address cap the server holds 550 of them and keeps serving.
    """
    server = FewFilesServer(
        tmp_path / "data", "[http]\nmax_connections_per_ip = 50\nheader_timeout_s = 120.0\n", 1024
    )
    server.start()
    slow: list[Stream] = []
    try:
        await server.wait_ready(http)
        token = await server.user_token(http, "alice")
        for ip in (f"127.0.0.{i}" for i in range(2, 13)):
            slow += await asyncio.gather(*(connect_from(server.http_port, ip) for _ in range(100)))
        for _, writer in slow:
            writer.write(b"GET / HTTP/1.1\r\nX-A: ")
        await asyncio.sleep(1.0)
        assert parse_response(await get_healthz(server.http_port))[0] == 200
        async with (
            asyncio.timeout(10),
            connect(
                f"ws://127.0.0.1:{server.ws_port}/",
                subprotocols=[Subprotocol("imserver.v1.json")],
            ) as ws,
        ):
            await ws.send(orjson.dumps({"type": "auth", "id": 1, "token": token}).decode())
            answer = orjson.loads(await ws.recv())
            assert answer["type"] == "result" and answer["data"]["user"] == "alice", answer
    finally:
        await close_all(slow)
        server.stop()


# --------------------------------------------------------------------------- WebSocket port


async def test_trickled_websocket_handshake_is_cut_off_at_open_timeout(
    start_server: StartServer,
) -> None:
    h = await start_server(gateway={"open_timeout_s": 1.0})
    reader, writer = await connect_from(h.world.ws_port)
    handshake = (
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    started = time.monotonic()
    sender = asyncio.create_task(trickle(writer, handshake, 0.25))
    await read_until_closed(reader, 6)
    assert time.monotonic() - started >= 0.9
    assert not sender.done(), "the handshake was still trickling when it was cut off"
    sender.cancel()
    writer.close()


async def test_websocket_caps_refuse_with_json_503(start_server: StartServer) -> None:
    h = await start_server(gateway={"max_connections_per_ip": 2})
    port = h.world.ws_port
    held = [await connect_from(port, "127.0.0.2") for _ in range(2)]
    reader, writer = await connect_from(port, "127.0.0.2")
    assert_json_error(await read_until_closed(reader, 5), 503, "too_many_connections")
    writer.close()
    assert refused(h, "ws", "too_many_connections") == 1
    alice = await h.raw("alice")  # another address still connects and authenticates
    assert (await alice.request("ping"))["type"] == "pong"
    await close_all(held)
    # Released slots are counted down again (the limiter holds only alice now).
    deadline = time.monotonic() + 5
    while h.world.gateway.connection_limiter.total != 1:
        assert time.monotonic() < deadline, h.world.gateway.connection_limiter.total
        await asyncio.sleep(0.05)


async def test_websocket_total_cap(start_server: StartServer) -> None:
    h = await start_server(gateway={"max_connections": 2, "max_connections_per_ip": 0})
    await h.raw("alice")
    await h.raw("bob")
    reader, writer = await connect_from(h.world.ws_port, "127.0.0.5")
    assert_json_error(await read_until_closed(reader, 5), 503, "too_many_connections")
    writer.close()


# --------------------------------------------------------------------------- JSON errors


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, h: Harness, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, f"{h.world.http_url}{path}", **kwargs) as resp:
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, dict(resp.headers), await resp.json()


async def test_unknown_route_and_wrong_method_are_json(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    status, _, body = await call(http, server, "GET", "/no/such/route")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, headers, body = await call(http, server, "DELETE", "/healthz")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    assert "GET" in headers["Allow"]


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (b"GARBAGE\r\n\r\n", "no request line"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", "header without colon"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", "field too long"),
        (b"POST /admin/v1/users HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", "length"),
    ],
)
async def test_unparseable_requests_get_json_400(
    server: Harness, request_bytes: bytes, why: str
) -> None:
    reader, writer = await connect_from(server.world.http_port)
    writer.write(request_bytes)
    raw = await read_until_closed(reader, 5)
    writer.close()
    status, _, _ = parse_response(raw)
    assert 400 <= status < 500, (why, raw[:200])
    assert_json_error(raw, status, "bad_request")


async def test_json_body_over_the_bound_is_413_payload_too_large(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    h = await start_server(auth={"admin_api_key": ADMIN_KEY})
    body = b'{"users": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    status, _, err = await call(
        http,
        h,
        "POST",
        "/admin/v1/users",
        data=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )
    assert status == 413 and err["error"]["code"] == "payload_too_large"


async def test_unexpected_fault_is_logged_json_500(
    tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    world = build_world(make_test_config(tmp_path / "data"))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    world.http_app.router.add_get("/test/broken", broken)
    await start_world(world)
    try:
        with caplog.at_level(logging.ERROR, logger="imserver.http.api"):
            async with http.get(f"{world.http_url}/test/broken") as resp:
                assert resp.status == 500 and resp.content_type == "application/json"
                assert (await resp.json())["error"]["code"] == "internal"
        logged = [r for r in caplog.records if r.exc_info and "a bug" in str(r.exc_info[1])]
        assert logged, "the fault was not logged with its traceback"
    finally:
        await stop_world(world)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"g:x"', "application/json"),
        ("机密".encode("gb18030"), "text/plain"),
    ],
)
async def test_governance_archive_bad_body_is_400_and_archives_nothing(
    start_server: StartServer, http: aiohttp.ClientSession, body: bytes, content_type: str
) -> None:
    h = await start_server(auth={"admin_api_key": ADMIN_KEY})
    await h.users("m1")
    owner = await h.raw("owner")
    created = await owner.request("group.create", name="zombie", members=["owner", "m1"])
    conv = created["data"]["conv"]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": content_type}
    path = "/admin/v1/governance/archive"
    status, _, err = await call(http, h, "POST", path, data=body, headers=admin)
    assert status == 400 and err["error"]["code"] == "invalid_field", err
    stored = await h.world.store.get_conversation(conv)
    assert stored is not None and not stored.archived
    # The same route with a proper body works.
    status, _, _ = await call(http, h, "POST", path, json={"conv": conv}, headers=admin)
    assert status == 200


# --------------------------------------------------------------------------- full disk


class ChildServer:
    """``python -m imserver serve`` as a child process, for limits that are per process."""

    SECRET = "s" * 40

    def __init__(self, data_dir: Path, extra_toml: str = "") -> None:
        self.data_dir = data_dir
        self.http_port, self.ws_port = free_port(), free_port()
        self.extra_toml = extra_toml
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir.parent / "child.toml"
        config.write_text(
            f"[server]\nws_port = {self.ws_port}\nhttp_port = {self.http_port}\n"
            f'data_dir = "{self.data_dir}"\nlog_level = "WARNING"\nuse_uvloop = false\n'
            f'[auth]\nsecret = "{self.SECRET}"\nadmin_api_key = "{ADMIN_KEY}"\n' + self.extra_toml
        )
        self.proc = self.launch(
            [sys.executable, "-m", "imserver", "serve", "--config", str(config)]
        )

    def launch(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=REPO)

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(200):
            assert self.proc is not None and self.proc.poll() is None, "server exited"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise AssertionError("server did not become ready")

    async def user_token(self, http: aiohttp.ClientSession, user: str) -> str:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with http.post(
            f"{self.url}/admin/v1/users", json={"users": [{"id": user}]}, headers=admin
        ) as r:
            assert r.status == 200, await r.text()
        return TokenSigner(self.SECRET).mint(user, "web", 600)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


class TinyDiskServer(ChildServer):
    """A child server whose files directory is a 256 KiB tmpfs.

    The tmpfs is mounted inside a private mount namespace of the child
    (``unshare --mount``, as root or with an unprivileged user namespace), so
    the disk is really full, nothing leaks into the host's mounts, and no
    root is needed where user namespaces are allowed.
    """

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    def launch(self, argv: list[str]) -> subprocess.Popen[bytes]:
        self.files_dir.mkdir(parents=True)
        unshare = shutil.which("unshare")
        assert unshare is not None, "needs util-linux unshare for a private tmpfs"
        namespaces = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
        script = 'mount -t tmpfs -o size=256k tmpfs "$1" && shift && exec "$@"'
        wrapped = ["sh", "-c", script, "sh", str(self.files_dir), *argv]
        return subprocess.Popen([unshare, *namespaces, *wrapped], cwd=REPO)

    def files_seen_by_server(self) -> list[str]:
        """The files directory as the server sees it (inside its mount namespace)."""
        assert self.proc is not None
        root = Path(f"/proc/{self.proc.pid}/root") / self.files_dir.relative_to("/")
        return sorted(p.name for p in root.rglob("*") if p.is_file())


class FewFilesServer(ChildServer):
    """A child server allowed ``nofile`` open files (the issue's tester had about 1,024)."""

    def __init__(self, data_dir: Path, extra_toml: str, nofile: int) -> None:
        super().__init__(data_dir, extra_toml)
        self.nofile = nofile

    def launch(self, argv: list[str]) -> subprocess.Popen[bytes]:
        nofile = self.nofile

        def limit_files() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        return subprocess.Popen(argv, cwd=REPO, preexec_fn=limit_files)


async def test_upload_on_a_full_disk_is_507_storage_full_and_leaves_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server = TinyDiskServer(tmp_path / "data")
    server.start()
    try:
        await server.wait_ready(http)
        token = await server.user_token(http, "alice")
        user = {"Authorization": f"Bearer {token}", "Content-Type": "application/pdf"}
        big = os.urandom(1024 * 1024)  # four times the disk
        async with http.post(
            f"{server.url}/api/v1/files", params={"name": "big.pdf"}, data=big, headers=user
        ) as r:
            assert r.status == 507 and r.content_type == "application/json", await r.text()
            assert (await r.json())["error"]["code"] == "storage_full"
        assert server.files_seen_by_server() == []  # the partial temp file is gone
        # The space came back: a small file now fits.
        small = os.urandom(16 * 1024)
        async with http.post(
            f"{server.url}/api/v1/files", params={"name": "small.pdf"}, data=small, headers=user
        ) as r:
            assert r.status == 201, await r.text()
            file_id = (await r.json())["id"]
        assert server.files_seen_by_server() == [file_id]
    finally:
        server.stop()


# --------------------------------------------------------------------------- file headers


async def upload_as(
    http: aiohttp.ClientSession, h: Harness, data: bytes, name: str, mime: str
) -> str:
    await h.users("alice")
    headers = {"Authorization": f"Bearer {h.token('alice', 'web')}", "Content-Type": mime}
    async with http.post(
        f"{h.world.http_url}/api/v1/files", params={"name": name}, data=data, headers=headers
    ) as r:
        assert r.status == 201, await r.text()
        file_id: str = (await r.json())["id"]
        return file_id


async def download_headers(
    http: aiohttp.ClientSession, h: Harness, file_id: str, name: str | None = None
) -> tuple[bytes, Any]:
    params = {"name": name} if name is not None else {}
    headers = {"Authorization": f"Bearer {h.token('alice', 'web')}"}
    async with http.get(
        f"{h.world.http_url}/api/v1/files/{file_id}", params=params, headers=headers
    ) as r:
        assert r.status == 200
        return await r.read(), r.headers


async def test_html_uploaded_as_png_is_served_nosniff_and_sandboxed(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    html = b"<html><script>alert(document.cookie)</script></html>"
    file_id = await upload_as(http, server, html, "cat.png", "image/png")
    body, headers = await download_headers(http, server, file_id, "cat.png")
    assert body == html
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert headers["Content-Disposition"] == (
        "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
    )


async def test_other_types_download_as_attachment_with_utf8_name(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    file_id = await upload_as(http, server, b"%PDF-1.4 ...", "报告.pdf", "application/pdf")
    _, headers = await download_headers(http, server, file_id, '季度"报告".pdf')
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"] == (
        'attachment; filename="______.pdf"; '
        "filename*=UTF-8''%E5%AD%A3%E5%BA%A6%22%E6%8A%A5%E5%91%8A%22.pdf"
    )
    # Without (or with an unusable) name, the id names the download.
    for name in (None, "a/b.pdf", "bad\r\nSet-Cookie: x=1"):
        _, headers = await download_headers(http, server, file_id, name)
        assert headers["Content-Disposition"] == (
            f"attachment; filename=\"{file_id}\"; filename*=UTF-8''{file_id}"
        )
        assert "Set-Cookie" not in headers


# --------------------------------------------------------------------------- fuzz

PATHS = [
    "/",
    "/healthz",
    "/metrics",
    "/api/v1/files",
    "/api/v1/files/" + "a" * 64,
    "/api/v1/files/x",
    "/admin/v1/users",
    "/admin/v1/users/alice",
    "/admin/v1/governance/archive",
    "/admin/v1/governance/merge",
    "/admin/v1/governance/report",
    "/admin/v1/directory/sync",
    "/admin/v1/units/u1",
    "/admin/v1/admins",
    "/admin/v1/whoami",
    "/admin/v1/revoke",
    "/admin/v1/scopes",
    "/admin/v1/apps",
    "/admin/v1/callbacks",
    "/api/v1/apps/cards",
    "/api/v1/apps/cards/t1",
    "/api/v1/apps/notices",
    "/api/v1/apps/tokens",
    "/api/v1/tokens/refresh",
    "/api/v1/cards/c1/act",
    "/api/v1/todo",
]
SEGMENT = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~%:@!$&'()*+,;=", min_size=0, max_size=12
)
SIGNED_HEADERS = [
    "X-Imserver-App",
    "X-Imserver-Timestamp",
    "X-Imserver-Nonce",
    "X-Imserver-Signature",
]
#: Latin-1 header values (what an HTTP/1.1 client can send), digit lookalikes like "²" included.
HEADER_VALUE = st.one_of(
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_categories=("Cc",)),
        max_size=70,
    ),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["²", "1²", "٣", "0x10", "1e3", " 12", "oa"]),
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def http_requests(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.sampled_from(PATHS))
    if draw(st.booleans()):
        path = path.rstrip("/") + "/" + draw(SEGMENT)
    query = draw(st.dictionaries(SEGMENT.filter(bool), st.text(max_size=20), max_size=3))
    body = draw(
        st.one_of(
            st.binary(max_size=200),
            JSONISH.map(lambda v: json.dumps(v).encode()),  # big ints, NaN: odd but JSON-ish
            st.just(b""),
        )
    )
    auth = draw(st.sampled_from(["", f"Bearer {ADMIN_KEY}", "Bearer user", "Bearer x.y.z", "x"]))
    signed = draw(st.dictionaries(st.sampled_from(SIGNED_HEADERS), HEADER_VALUE, max_size=4))
    return {
        "signed": signed,
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])),
        "path": path,
        "query": query,
        "body": body,
        "auth": auth,
        "content_type": draw(
            st.sampled_from(["application/json", "application/pdf", "text/plain", "image/png"])
        ),
    }


async def test_fuzz_http_never_5xx_and_errors_always_json(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    h = await start_server(auth={"admin_api_key": ADMIN_KEY})
    await h.users("alice")
    user_token = h.token("alice", "web")
    loop = asyncio.get_running_loop()
    seen = {"examples": 0}

    async def step(req: dict[str, Any]) -> None:
        seen["examples"] += 1
        auth = req["auth"].replace("Bearer user", f"Bearer {user_token}")
        headers = {"Content-Type": req["content_type"], **req["signed"]}
        if auth:
            headers["Authorization"] = auth
        url = URL(h.world.http_url).with_path(req["path"], encoded=False)
        async with http.request(
            req["method"], url.with_query(req["query"]), data=req["body"], headers=headers
        ) as resp:
            raw = await resp.read()
            assert resp.status < 500, (req, resp.status, raw[:300])
            if resp.status >= 400:
                assert resp.content_type == "application/json", (req, resp.status, raw[:300])
                error = orjson.loads(raw)["error"]
                assert isinstance(error["code"], str) and isinstance(error["message"], str)

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(req=http_requests())
    def run_one(req: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(step(req), loop).result(timeout=30)

    await asyncio.to_thread(run_one)
    assert seen["examples"] >= 200
    async with http.get(f"{h.world.http_url}/healthz") as resp:
        assert resp.status == 200
