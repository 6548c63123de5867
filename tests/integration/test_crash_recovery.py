"""``kill -9`` during a send storm: everything acked survives, seqs stay gapless."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from imserver.config import load_config
from imserver.store.sqlite.store import SqliteStore
from imserver.tokens import TokenSigner, load_or_create_secret
from imserver_sdk import Client, ClientClosed, ServerError
from tests.processes import ServerProcess


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
