"""Start the demo world as an operator would: server and bots as child processes.

The server is ``python -m imserver serve --config <file>`` on the embedded
default (SQLite, in-process bus) and the bots are ``python -m bots run
--config <file>``; both are reached only over loopback HTTP and WebSocket
(the admin API for directory sync and app registration, an identity app for
user tokens), so this module imports neither ``imserver`` nor ``cards`` -
exactly what a province's deployment scripts would do. The simulated
business systems run in this process (small aiohttp apps).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bots.demo.flows import Flow, FlowContext
from bots.demo.org import Org, build_org, org_ndjson
from imserver_sdk import BusinessClient, Client

REPO = Path(__file__).resolve().parents[2]
IDENTITY_APP = "demo-identity"
STATE_FILE = "demo.json"
PR_SET_PDEATHSIG = 1  # what `python -m bots.demo token|watch` reads


class DemoError(RuntimeError):
    """The world could not be started (a child exited, a port never answered)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_toml(data_dir: Path, ws_port: int, http_port: int, admin_key: str) -> str:
    """The embedded default, on free ports, with quick callback retries for a demo."""
    return f"""\
[server]
host = "127.0.0.1"
ws_port = {ws_port}
http_port = {http_port}
data_dir = "{data_dir}"
log_level = "WARNING"

[auth]
admin_api_key = "{admin_key}"

[cards]
callback_backoff_initial_s = 0.2
callback_backoff_max_s = 2.0
callback_max_attempts = 30
"""


@dataclass
class DemoWorld:
    """Everything that runs, and how to reach it."""

    data_dir: Path
    org: Org
    admin_key: str
    ws_port: int
    http_port: int
    bots_port: int
    identity_secret: str
    contexts: dict[str, FlowContext] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    identity: BusinessClient | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def bots_url(self) -> str:
        return f"http://127.0.0.1:{self.bots_port}"

    def events_url(self, flow: str) -> str:
        return f"{self.bots_url}/bots/{flow}/events"

    async def token(self, user: str, device: str = "demo") -> str:
        """A fresh access token for ``user``, from the identity app (docs/security.md)."""
        assert self.identity is not None
        answer = await self.identity.request(
            "POST", "/api/v1/apps/tokens", {"user": user, "device": device}
        )
        return str(answer["access_token"])

    async def client(self, user: str, device: str = "demo") -> Client:
        """A connected SDK client for ``user`` (a new token on every reconnect)."""

        async def provide() -> str:
            return await self.token(user, device)

        c = Client(self.ws_url, provide)
        await c.connect()
        return c

    def state(self) -> dict[str, Any]:
        return {
            "http_url": self.http_url,
            "ws_url": self.ws_url,
            "bots_url": self.bots_url,
            "identity_app": IDENTITY_APP,
            "identity_secret": self.identity_secret,
        }


async def start_world(data_dir: Path, flows: list[Flow], org: Org | None = None) -> DemoWorld:
    """Server, org, apps, business systems and bots, each checked before the next."""
    world = DemoWorld(
        data_dir=_prepared(data_dir),
        org=org or build_org(),
        admin_key=secrets.token_urlsafe(24),
        ws_port=free_port(),
        http_port=free_port(),
        bots_port=free_port(),
        identity_secret=secrets.token_urlsafe(32),
    )
    try:
        await _start_server(world)
        await _admin(world, "POST", "/admin/v1/directory/sync?mode=full", org_ndjson(world.org))
        await _register(
            world,
            IDENTITY_APP,
            world.identity_secret,
            "http://127.0.0.1:9/unused",
            permissions=("tokens",),
        )
        world.identity = BusinessClient(world.http_url, IDENTITY_APP, world.identity_secret)
        for flow in flows:
            ctx = FlowContext(flow, secrets.token_urlsafe(32), secrets.token_urlsafe(32))
            ctx.system = flow.make_system(ctx.event_secret, world.org)
            await ctx.system.start()
            callback = f"{world.bots_url}/bots/{flow.name}/callback"
            await _register(world, flow.name, ctx.app_secret, callback)
            world.contexts[flow.name] = ctx
        await _start_bots(world)
        (world.data_dir / STATE_FILE).write_text(json.dumps(world.state(), indent=2))
    except BaseException:
        await stop_world(world)
        raise
    return world


async def stop_world(world: DemoWorld) -> None:
    """Stop every child (SIGTERM, then SIGKILL after 10 s) and every business system."""
    for name in ("bots", "imserver"):
        proc = world.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
    for ctx in world.contexts.values():
        if ctx.system is not None:
            await ctx.system.stop()
    if world.identity is not None:
        await world.identity.close()


def _prepared(data_dir: Path) -> Path:
    """The data directory, created, as an absolute path (the children run elsewhere)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir.absolute()


def check_alive(world: DemoWorld) -> None:
    """Raise :class:`DemoError` naming the child that died, with its log's tail."""
    for name, proc in world.procs.items():
        if proc.poll() is not None:
            raise DemoError(f"{name} exited with {proc.returncode}:\n{_tail(world, name)}")


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the demo dies, even by SIGKILL.

    So a scenario killed by a CI timeout leaves no server or bot behind.
    Elsewhere this does nothing; ``stop_world`` still stops the children.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(world: DemoWorld, name: str, args: list[str]) -> None:
    log = open(world.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    world.procs[name] = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    log.close()


def _tail(world: DemoWorld, name: str, lines: int = 20) -> str:
    try:
        text = (world.data_dir / f"{name}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


async def _wait_healthy(world: DemoWorld, name: str, url: str, within_s: float = 60.0) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(within_s / 0.1)):
            check_alive(world)
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise DemoError(f"{name} did not answer {url} within {within_s:.0f} s:\n{_tail(world, name)}")


async def _start_server(world: DemoWorld) -> None:
    config = world.data_dir / "imserver.toml"
    server_data = world.data_dir / "imserver"
    config.write_text(server_toml(server_data, world.ws_port, world.http_port, world.admin_key))
    _spawn(world, "imserver", ["imserver", "serve", "--config", str(config)])
    await _wait_healthy(world, "imserver", f"{world.http_url}/healthz")


async def _start_bots(world: DemoWorld) -> None:
    lines = [
        "[runtime]",
        f'server_url = "{world.http_url}"',
        f"port = {world.bots_port}",
        f'store = "{world.data_dir / "bots.sqlite3"}"',
        "backoff_initial_s = 0.2",
        "backoff_max_s = 2.0",
    ]
    for ctx in world.contexts.values():
        assert ctx.system is not None
        lines += [
            "[[bot]]",
            f'name = "{ctx.flow.name}"',
            f'class = "{ctx.flow.bot_class}"',
            f'app_id = "{ctx.flow.name}"',
            f'app_secret = "{ctx.app_secret}"',
            f'event_secret = "{ctx.event_secret}"',
            f'forward_url = "{ctx.system.forward_url}"',
        ]
        if ctx.flow.bot_options:
            lines.append("[bot.options]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in ctx.flow.bot_options.items()]
    config = world.data_dir / "bots.toml"
    config.write_text("\n".join(lines) + "\n")
    _spawn(world, "bots", ["bots", "run", "--config", str(config), "--log-level", "WARNING"])
    await _wait_healthy(world, "bots", f"{world.bots_url}/healthz")


async def _admin(world: DemoWorld, method: str, path: str, body: bytes | dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {world.admin_key}"}
    kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"data": body}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, world.http_url + path, headers=headers, **kwargs) as r,
    ):
        answer = await r.json(content_type=None)
        if r.status >= 300:
            raise DemoError(f"{method} {path} answered {r.status}: {answer}")
        return answer


async def _register(
    world: DemoWorld, app_id: str, secret: str, callback_url: str, permissions: tuple[str, ...] = ()
) -> None:
    """Register an app through the admin API (docs/cards.md section 1)."""
    body = {
        "app_id": app_id,
        "secret": secret,
        "callback_url": callback_url,
        "scope": ["*"],
        "permissions": list(permissions),
    }
    await _admin(world, "POST", "/admin/v1/apps", body)
