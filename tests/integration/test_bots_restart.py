"""``kill -9`` of the bot process mid-flow loses nothing and doubles nothing.

The bot runs as a real child process (``python -m bots run --config ...``).
The server is reached through a loopback TCP gate the test can shut, so
events can be accepted while the server is unreachable and left in the
outbox at the moment of the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from bots.demo.oa_system import OASystem, leave_request
from bots.runtime.model import track_id
from imserver_sdk import Client
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS
from tests.integration.test_bots_oa import act, card_messages, register_app, until
from tests.processes import REPO, free_port
from tests.support import Harness

#: The server keeps retrying a callback while the bot is down (~10 s budget).
PATIENT_CARDS = {**CARD_SETTINGS, "callback_max_attempts": 40, "callback_backoff_max_s": 0.3}


class Gate:
    """A TCP relay to the server's HTTP port that the test can shut and reopen."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def shut(self) -> None:
        """Refuse new connections and cut the open ones (keep-alive would bypass the gate)."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


class BotProcess:
    """``python -m bots run`` as a child process on a fixed port (the callback URL)."""

    def __init__(self, tmp: Path, server_url: str, forward_url: str) -> None:
        self.port = free_port()
        self.app_secret, self.event_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.config = tmp / "bots.toml"
        self.config.write_text(
            f'[runtime]\nserver_url = "{server_url}"\nport = {self.port}\n'
            f'store = "{tmp / "bots.sqlite3"}"\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.3\n'
            "inline_push_timeout_s = 1.0\n"
            f'[[bot]]\nname = "oa"\nclass = "bots.oa:OABot"\napp_id = "oa"\n'
            f'app_secret = "{self.app_secret}"\nevent_secret = "{self.event_secret}"\n'
            f'forward_url = "{forward_url}"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, what: str) -> str:
        return f"http://127.0.0.1:{self.port}/bots/oa/{what}"

    def spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "bots", "run", "--config", str(self.config)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    async def start(self) -> None:
        """Spawn the process (a quick fork) and wait until its /healthz answers."""
        self.proc = self.spawn()
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                        if r.status == 200:
                            return
                assert self.proc.poll() is None, "the bot process exited at start"
                await asyncio.sleep(0.05)
        raise AssertionError("the bot process did not become ready")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.mark.slow
async def test_kill9_mid_flow_loses_nothing_and_doubles_nothing(
    start_server: Callable[..., Awaitable[Harness]], tmp_path: Path
) -> None:
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=PATIENT_CARDS)
    gate = Gate(int(server.world.http_url.rsplit(":", 1)[1]))
    oa = OASystem("")  # the secret is the bot's, set below
    await oa.start()
    bot = BotProcess(tmp_path, f"http://127.0.0.1:{gate.port}", oa.forward_url)
    oa.event_secret = bot.event_secret
    await register_app(server.world.http_url, "oa", bot.app_secret, bot.url("callback"))
    li: Client = await server.client("li")
    try:
        # 1. Events accepted while the server is unreachable, then kill -9 with them queued.
        await bot.start()
        for n in range(3):
            status, answer = await oa.send_event(bot.url("events"), leave_request(f"k{n}", ["li"]))
            assert (status, answer["state"]) == (202, "queued"), answer
        bot.kill9()
        await gate.open()
        await bot.start()
        await until(lambda: len(card_messages(li, "li")) == 3, timeout=10, what="three cards")
        views = sorted(card_messages(li, "li"), key=lambda v: str(v["out_track_id"]))
        status, answer = await oa.send_event(bot.url("events"), leave_request("k0", ["li"]))
        assert status == 200 and answer["duplicate"] is True  # remembered across the kill

        # 2. The bot is dead when the approver acts: the server's callback waits for it.
        bot.kill9()
        await act(li, views[0]["card_id"], "approve")
        await asyncio.sleep(0.5)
        await bot.start()
        await until(lambda: len(oa.decisions) == 1, timeout=10, what="decision after restart")

        # 3. OA is down with the forward queued, and the bot is killed then.
        oa.down = True
        await act(li, views[1]["card_id"], "approve")
        await until(lambda: oa.refused >= 1, timeout=10, what="a refused forward")
        bot.kill9()
        oa.down = False
        await bot.start()
        await until(lambda: len(oa.decisions) == 2, timeout=10, what="decision after OA outage")

        await asyncio.sleep(1.0)  # let any would-be duplicate arrive
        assert len(oa.deliveries) == 2, oa.deliveries  # each decision reached OA exactly once
        assert sorted((d["request_id"], d["state"]) for d in oa.decisions.values()) == [
            ("OA-k0", "approved"),
            ("OA-k1", "approved"),
        ]
        held = card_messages(li, "li")
        assert sorted(v["out_track_id"] for v in held) == [track_id(f"k{n}") for n in range(3)]
        assert bot.proc is not None
        bot.proc.terminate()  # SIGTERM: a clean stop
        assert bot.proc.wait(10) == 0
    finally:
        bot.stop()
        await gate.shut()
        await oa.stop()
