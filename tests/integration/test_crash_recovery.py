"""``kill -9`` during a send storm: everything acked survives, seqs stay gapless."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from imserver_sdk import Client, ClientClosed, ServerError

from imserver.config import load_config
from imserver.store.sqlite import SqliteStore
from imserver.tokens import TokenSigner, load_or_create_secret

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``python -m imserver serve`` as a real child process on free ports."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.config_path = data_dir.parent / "crash.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws_port = self.http_port = 0

    def start(self) -> None:
        self.ws_port, self.http_port = free_port(), free_port()
        self.config_path.write_text(
            f"[server]\nws_port = {self.ws_port}\nhttp_port = {self.http_port}\n"
            f'data_dir = "{self.data_dir}"\nuse_uvloop = true\nlog_level = "WARNING"\n'
            '[store]\nsqlite_synchronous = "FULL"\n'
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


@pytest.mark.slow
async def test_kill_9_during_send_storm_loses_nothing_acked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = load_config(None, env={}, overrides={"server": {"data_dir": str(data_dir)}})
    senders = [f"w{i}" for i in range(5)]
    store = SqliteStore(config.sqlite_file)
    await store.open()
    await store.upsert_users([(u, u) for u in [*senders, "boss"]], 0)
    await store.close()
    signer = TokenSigner(load_or_create_secret("", data_dir))

    server = ServerProcess(data_dir)
    server.start()
    try:
        await server.wait_ready()
        acked: dict[str, tuple[str, int]] = {}  # client_msg_id -> (conv, seq)
        attempted: list[tuple[str, str]] = []  # (sender, client_msg_id)
        clients = [
            Client(server.url, signer.mint(u, "pc", 600), reconnect=False, request_timeout=2)
            for u in senders
        ]
        for c in clients:
            await c.connect()
        conv = (await clients[0].create_group("抗压", [*senders[1:], "boss"]))["conv"]

        enough = asyncio.Event()

        async def storm(i: int) -> None:
            c = clients[i]
            k = 0
            while True:
                cmid = f"{senders[i]}-{k}"
                attempted.append((senders[i], cmid))
                try:
                    ack = await c.send_text(f"storm {cmid}", conv=conv, client_msg_id=cmid)
                except (ClientClosed, ServerError, TimeoutError, ConnectionError):
                    return
                acked[cmid] = (ack.conv, ack.seq)
                if len(acked) >= 300:
                    enough.set()
                k += 1

        tasks = [asyncio.create_task(storm(i)) for i in range(len(clients))]
        await asyncio.wait_for(enough.wait(), 60)
        server.kill9()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for c in clients:
            await c.close()
        assert len(acked) >= 300

        # Restart on the same data dir: every acked message is there, gapless.
        server.start()
        await server.wait_ready()
        boss = Client(server.url, signer.mint("boss", "pc", 600), reconnect=False)
        await boss.connect()  # syncs everything
        held = boss.messages(conv)
        seqs = [m["seq"] for m in held]
        assert seqs == list(range(1, len(seqs) + 1)), "seqs must be gapless from 1"
        by_cmid = {m["client_msg_id"]: m["seq"] for m in held if m["client_msg_id"]}
        for cmid, (_, seq) in acked.items():
            assert by_cmid.get(cmid) == seq, f"acked message {cmid} lost or moved"

        # Resending everything that was attempted stores nothing twice.
        for sender in senders:
            c = Client(server.url, signer.mint(sender, "pc", 600), reconnect=False, auto_sync=False)
            await c.connect()
            for who, cmid in attempted:
                if who != sender:
                    continue
                ack = await c.send_text(f"storm {cmid}", conv=conv, client_msg_id=cmid)
                if cmid in acked:
                    assert ack.duplicate and ack.seq == acked[cmid][1]
            await c.close()
        final = await boss.request("history", conv=conv, limit=1)
        last_seq = final["messages"][-1]["seq"]
        assert last_seq == 1 + len({cmid for _, cmid in attempted})
        await boss.close()
    finally:
        server.stop()
