"""A real ``python -m imserver serve`` child process on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
__all__ = ["REPO", "ServerProcess", "free_port"]


class ServerProcess:
    """``python -m imserver serve`` as a real child process on free ports."""

    def __init__(self, data_dir: Path, extra_toml: str = "") -> None:
        self.data_dir = data_dir
        self.extra_toml = extra_toml
        self.config_path = data_dir.parent / "crash.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws_port = self.http_port = 0

    def start(self) -> None:
        self.ws_port, self.http_port = free_port(), free_port()
        self.config_path.write_text(
            f"[server]\nws_port = {self.ws_port}\nhttp_port = {self.http_port}\n"
            f'data_dir = "{self.data_dir}"\nuse_uvloop = true\nlog_level = "WARNING"\n'
            '[store]\nsqlite_synchronous = "FULL"\n'
            # Rate limits have their own tests; a send storm here must not hit them.
            "[limits]\nuser_requests_per_s = 1e6\nuser_burst = 1000000\n" + self.extra_toml
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imserver", "serve", "--config", str(self.config_path)],
            cwd=REPO,
        )

    async def wait_ready(self) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{self.http_port}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("server did not become ready")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"
