"""Guarantee 7: callbacks in the outbox survive ``kill -9`` of the server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from imserver.config import load_config
from imserver.store.sqlite.store import SqliteStore
from imserver.tokens import TokenSigner, load_or_create_secret
from imserver_sdk import BusinessClient, Client
from tests.cards_support import ADMIN_KEY, BusinessStub, approval_card
from tests.processes import ServerProcess, free_port


@pytest.mark.slow
async def test_actions_in_the_outbox_are_delivered_after_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = load_config(None, env={}, overrides={"server": {"data_dir": str(data_dir)}})
    store = SqliteStore(config.sqlite_file)
    await store.open()
    await store.upsert_users([(u, u) for u in ("li", "wang", "zhao")], 0)
    await store.close()
    signer = TokenSigner(load_or_create_secret("", data_dir))

    stub = BusinessStub()
    stub_port = free_port()  # the business system is down: nothing listens here yet
    stub.port = stub_port
    server = ServerProcess(
        data_dir,
        extra_toml=(
            f'[auth]\nadmin_api_key = "{ADMIN_KEY}"\n'
            "[cards]\ncallback_timeout_s = 0.5\ncallback_backoff_initial_s = 0.1\n"
            "callback_backoff_max_s = 0.3\ncallback_max_attempts = 1000\n"
        ),
    )
    server.start()
    try:
        await server.wait_ready()
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{server.http_url}/admin/v1/apps",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                json={
                    "app_id": "oa",
                    "secret": stub.secret,
                    "callback_url": stub.url,
                    "scope": ["*"],
                },
            ) as r,
        ):
            assert r.status == 201
        async with BusinessClient(server.http_url, "oa", stub.secret) as oa:
            ids = [
                (await oa.push_card(approval_card(f"k{i}", ["li"]), users=["li", "wang"]))[
                    "card_id"
                ]
                for i in range(3)
            ]
        li = Client(server.url, signer.mint("li", "pc", 600), reconnect=False)
        await li.connect()
        for card_id in ids:
            await li.request(
                "card.act", card_id=card_id, action="approve", action_id=f"x-{card_id}"
            )
        await li.close()
        await asyncio.sleep(0.5)  # a few failed attempts happen meanwhile
        server.kill9()

        await stub.start(port=stub_port)  # the business system comes back
        server.start()
        await server.wait_ready()
        for _ in range(300):
            if len(stub.actions) >= 3:
                break
            await asyncio.sleep(0.05)
        assert sorted(a.card_id for a in stub.actions) == sorted(ids)
        assert sorted(a.action_id for a in stub.actions) == sorted(f"x-{c}" for c in ids)
        # Every holder ends on the delivered state.
        wang = Client(server.url, signer.mint("wang", "pc", 600), reconnect=False)
        await wang.connect()
        for _ in range(100):
            views = [await wang.request("card.get", card_id=c) for c in ids]
            if all(v["callback"] == "ok" for v in views):
                break
            await asyncio.sleep(0.05)
        assert all(v["state"] == "approved" and v["callback"] == "ok" for v in views)
        await wang.close()
    finally:
        server.stop()
        await stub.stop()
