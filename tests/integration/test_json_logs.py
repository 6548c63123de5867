"""``server.log_format = "json"``: a real server process writes one JSON object
per line, and one request id ties the HTTP request, the card decision it
caused and the callback sent for it (which carries it as ``X-Request-Id``)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from imserver.tokens import TokenSigner, load_or_create_secret
from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, approval_card
from tests.processes import REPO, free_port

TRACE = "oa-trace-20261203.42"


class CallbackRecorder:
    """A business system that answers 200 and keeps each callback's headers."""

    def __init__(self) -> None:
        self.headers: list[CIMultiDict[str]] = []
        self.bodies: list[bytes] = []
        self.got = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def on_callback(request: web.Request) -> web.Response:
            self.bodies.append(await request.read())
            self.headers.append(request.headers.copy())  # names are case-insensitive
            self.got.set()
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/callback", on_callback)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]


async def _ready(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(200):
        try:
            async with http.get(f"{base}/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("server did not become ready")


async def test_one_request_id_ties_request_decision_and_callback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ws_port, http_port = free_port(), free_port()
    config = tmp_path / "json.toml"
    config.write_text(
        f'[server]\nws_port = {ws_port}\nhttp_port = {http_port}\ndata_dir = "{data}"\n'
        'log_format = "json"\nlog_level = "INFO"\nuse_uvloop = false\n'
        f'[auth]\nadmin_api_key = "{ADMIN_KEY}"\n'
    )
    log_file = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imserver",
        "serve",
        "--config",
        str(config),
        cwd=REPO,
        stderr=log_file,
    )
    recorder = CallbackRecorder()
    await recorder.start()
    base = f"http://127.0.0.1:{http_port}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        async with aiohttp.ClientSession() as http:
            await _ready(http, base)
            async with http.post(
                f"{base}/admin/v1/users", headers=admin, json={"users": [{"id": "li"}]}
            ) as r:
                assert r.status == 200
                generated = r.headers["X-Request-Id"]  # none sent: one was made
                assert re.fullmatch(r"[0-9a-f]{32}", generated)
            async with http.post(
                f"{base}/admin/v1/apps",
                headers={**admin, "X-Request-Id": "not valid!"},  # malformed: replaced
                json={
                    "app_id": "oa",
                    "secret": "k" * 40,
                    "callback_url": f"http://127.0.0.1:{recorder.port}/callback",
                    "scope": ["*"],
                },
            ) as r:
                assert r.status == 201
                assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
            async with BusinessClient(base, "oa", "k" * 40) as oa:
                pushed = await oa.push_card(approval_card("json-1", ["li"]), users=["li"])
            token = TokenSigner(load_or_create_secret("", data)).mint("li", "pc", 600)
            async with http.post(
                f"{base}/api/v1/cards/{pushed['card_id']}/act",
                headers={"Authorization": f"Bearer {token}", "X-Request-Id": TRACE},
                json={"action": "approve", "action_id": "act-1"},
            ) as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Request-Id"] == TRACE  # honoured and echoed
            await asyncio.wait_for(recorder.got.wait(), 10)
            await asyncio.sleep(0.3)  # the delivery's log line follows the stub's answer
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
        log_file.close()
        assert recorder.runner is not None
        await recorder.runner.cleanup()

    (sent,) = [h for h in recorder.headers if h.get("X-Imserver-Action-Id") == "act-1"]
    assert sent.get("X-Request-Id") == TRACE  # the callback carries it
    lines = (tmp_path / "server.log").read_bytes().splitlines()
    records: list[dict[str, Any]] = [orjson.loads(line) for line in lines if line.strip()]
    for rec in records:  # every line is one JSON object with the fixed keys
        assert {"ts", "level", "logger", "msg"} <= rec.keys(), rec
    traced = [r for r in records if r.get("request_id") == TRACE]
    loggers = {r["logger"] for r in traced}
    assert {"imserver.http", "cards.service", "cards.callbacks"} <= loggers, traced
    decision = next(r for r in traced if r["logger"] == "cards.service")
    callback = next(r for r in traced if r["logger"] == "cards.callbacks")
    assert decision["card_id"] == callback["card_id"] == pushed["card_id"]
    assert decision["action_id"] == callback["action_id"] == "act-1"
    access = next(r for r in traced if r["logger"] == "imserver.http")
    assert access["route"] == "/api/v1/cards/{card_id}/act" and access["status"] == 200
