"""A simulated 统建 OA system: signs events to the OA bot, receives its decisions.

It plays the business-system side of docs/bots.md exactly: events are signed
with the shared ``event_secret`` (the SDK's scheme), and each decision forward
is verified and recorded once per ``Idempotency-Key`` - the way a real OA
system must drop the repeats an at-least-once forward can bring. ``down``
makes it answer 503, to simulate an outage.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from bots.runtime.outbox import IDEMPOTENCY_HEADER
from imserver_sdk import NonceCache, SignatureError, sign_request, verify_signature


class OASystem:
    """The OA side: ``send_event`` to the bot, ``decisions`` it received (deduplicated)."""

    def __init__(self, event_secret: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.event_secret = event_secret
        self.host, self.port = host, port
        self.down = False
        self.decisions: dict[str, dict[str, Any]] = {}  # Idempotency-Key → body
        self.deliveries: list[str] = []  # every accepted POST's key, repeats included
        self.refused = 0  # POSTs answered 503 while down
        self.changed = asyncio.Event()
        self._nonces = NonceCache()
        self._runner: web.AppRunner | None = None

    @property
    def forward_url(self) -> str:
        return f"http://{self.host}:{self.port}/decisions"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/decisions", self._decision)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _decision(self, request: web.Request) -> web.Response:
        if self.down:
            self.refused += 1
            return web.Response(status=503, text="OA is down for maintenance")
        body = await request.read()
        try:
            verify_signature(self.event_secret, request.headers, body, seen_nonces=self._nonces)
        except SignatureError as e:
            return web.json_response({"error": {"code": e.code, "message": e.message}}, status=401)
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if not key:
            return web.json_response({"error": {"code": "missing_key"}}, status=400)
        self.deliveries.append(key)
        self.decisions.setdefault(key, json.loads(body))
        self.changed.set()
        return web.json_response({"ok": True})

    async def send_event(
        self, url: str, event: dict[str, Any], *, secret: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST one signed event to a bot; return ``(status, answer)``."""
        body = json.dumps(event, ensure_ascii=False).encode()
        return await self.send_raw(url, body, secret=secret)

    async def send_raw(
        self, url: str, body: bytes, *, secret: str | None = None, sign: bool = True
    ) -> tuple[int, dict[str, Any]]:
        headers = sign_request("oa-system", secret or self.event_secret, body) if sign else {}
        headers["Content-Type"] = "application/json"
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, data=body, headers=headers) as r,
        ):
            return r.status, await r.json(content_type=None)


def leave_request(
    event_id: str, approvers: list[str], mode: str = "chain", **extra: Any
) -> dict[str, Any]:
    """A realistic 请假 event for the OA bot."""
    data: dict[str, Any] = {
        "request_id": f"OA-{event_id}",
        "kind": "leave",
        "title": "张三请假 3 天",
        "applicant": "张三",
        "mode": mode,
        "approvers": approvers,
        "fields": [{"label": "事由", "value": "家中有事"}, {"label": "天数", "value": "3"}],
        "summary": "**起止**：11月27日—11月29日",
    }
    data.update(extra)
    return {"event_id": event_id, "type": "oa.request", "data": data}
