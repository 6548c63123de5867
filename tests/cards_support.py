"""A business system on loopback for card tests: a real aiohttp server.

It receives the server's signed callbacks through the SDK's own
``callback_handler`` (exactly as a third-party business system would), can be
scripted to fail (HTTP 500, or answer too late), and records what it got.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from imserver_sdk import BusinessClient, CallbackAction, callback_handler
from tests.support import Harness

ADMIN_KEY = "test-admin-key-0123456789"
CARD_SETTINGS: dict[str, Any] = {
    "callback_timeout_s": 0.5,
    "callback_backoff_initial_s": 0.05,
    "callback_backoff_max_s": 0.2,
    "callback_max_attempts": 4,
}


class BusinessStub:
    def __init__(self) -> None:
        self.app_id = "oa"
        self.secret = secrets.token_urlsafe(32)
        self.actions: list[CallbackAction] = []  # accepted by the SDK handler (deduplicated)
        self.hits = 0  # HTTP requests received, including failed ones
        self.script: list[str] = []  # per request: "500", "slow" or "ok" (default "ok")
        self.answer: Callable[[CallbackAction], dict[str, Any] | None] = lambda a: None
        self.got_action = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

        async def on_action(action: CallbackAction) -> dict[str, Any] | None:
            self.actions.append(action)
            self.got_action.set()
            return self.answer(action)

        self._verified = callback_handler(self.secret, on_action)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        mode = self.script.pop(0) if self.script else "ok"
        if mode == "500":
            return web.Response(status=500, text="business system down")
        if mode == "slow":
            await asyncio.sleep(CARD_SETTINGS["callback_timeout_s"] + 0.5)
        return await self._verified(request)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/callback", self._route)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"


async def register_app(
    http_url: str, stub: BusinessStub, scope: list[str] | None = None, app_id: str | None = None
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{http_url}/admin/v1/apps",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={
                "app_id": app_id or stub.app_id,
                "secret": stub.secret,
                "callback_url": stub.url,
                "scope": scope if scope is not None else ["*"],
                "name": "协同办公",
            },
        ) as r,
    ):
        assert r.status == 201, await r.text()


async def business(server: Harness, stub: BusinessStub) -> BusinessClient:
    await register_app(server.world.http_url, stub)
    return BusinessClient(server.world.http_url, stub.app_id, stub.secret)


def approval_card(
    track: str, actors: list[str], policy: str = "any", **extra: Any
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "out_track_id": track,
        "title": "请假审批：张三 3 天",
        "fields": [
            {"label": "申请人", "value": "张三"},
            {"label": "手机", "value": "13812341234", "sensitive": True},
        ],
        "body_md": "**起止**：11月27日—11月29日",
        "status": {"text": "待审批", "color": "orange"},
        "actions": [
            {"id": "approve", "label": "同意", "decision": "approve", "style": "primary"},
            {"id": "reject", "label": "驳回", "decision": "reject", "style": "danger"},
        ],
        "inputs": [{"id": "comment", "type": "text", "label": "意见", "required_for": ["reject"]}],
        "policy": {"type": policy, "actors": actors},
    }
    card.update(extra)
    return card
