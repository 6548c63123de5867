"""The business client's template calls: what each sends, signed, to which route.

A real aiohttp server on 127.0.0.1 plays imserver: it verifies each request's
signature with the app's secret and records method, path and body, so the
tests pin the wire contract of docs/cards.md ("Templates", "Private data")
without needing the server itself (tests/integration/test_card_templates.py
runs the same calls against it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from imserver_sdk import BusinessClient

SECRET = "oa-template-secret-0123456789abcdef"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ts, nonce = request.headers["X-Imserver-Timestamp"], request.headers["X-Imserver-Nonce"]
        want = hmac.new(SECRET.encode(), f"{ts}\n{nonce}\n".encode() + raw, hashlib.sha256)
        assert request.headers["X-Imserver-Signature"] == want.hexdigest()
        self.calls.append((request.method, request.path_qs, json.loads(raw) if raw else None))
        return web.json_response({"ok": True, "templates": [{"template_id": "leave"}]})


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    rec.runner = web.AppRunner(app)
    await rec.runner.setup()
    site = web.TCPSite(rec.runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{rec.runner.addresses[0][1]}"
    yield rec
    await rec.runner.cleanup()


async def test_template_calls_hit_their_routes_with_their_bodies(recorder: Recorder) -> None:
    private = {"li": {"fields": [{"label": "额度", "value": "5"}]}}
    async with BusinessClient(recorder.url, "oa", SECRET) as oa:
        await oa.put_template("leave", {"title": "{{t}}"})
        await oa.get_template("leave")
        await oa.get_template("leave", version=2)
        assert await oa.list_templates() == [{"template_id": "leave"}]
        await oa.preview_template("leave", {"t": "x"}, version=1, private=private, viewer="li")
        await oa.push_template_card("leave", {"t": "x"}, users=["li"], template_version=1)
        await oa.push_card(users=["li"], template_id="leave", variables={"t": "y"}, private=private)
        await oa.push_card({"out_track_id": "c", "title": "t"}, users=["li"], private=private)
    assert recorder.calls == [
        ("PUT", "/api/v1/templates/leave", {"template": {"title": "{{t}}"}}),
        ("GET", "/api/v1/templates/leave", None),
        ("GET", "/api/v1/templates/leave?version=2", None),
        ("GET", "/api/v1/templates", None),
        (
            "POST",
            "/api/v1/templates/leave/preview",
            {"variables": {"t": "x"}, "version": 1, "private": private, "viewer": "li"},
        ),
        (
            "POST",
            "/api/v1/apps/cards",
            {
                "to": {"users": ["li"], "groups": []},
                "template_id": "leave",
                "variables": {"t": "x"},
                "template_version": 1,
            },
        ),
        (
            "POST",
            "/api/v1/apps/cards",
            {
                "to": {"users": ["li"], "groups": []},
                "template_id": "leave",
                "variables": {"t": "y"},
                "private": private,
            },
        ),
        (
            "POST",
            "/api/v1/apps/cards",
            {
                "to": {"users": ["li"], "groups": []},
                "card": {"out_track_id": "c", "title": "t"},
                "private": private,
            },
        ),
    ]


async def test_push_card_needs_exactly_one_of_card_and_template(recorder: Recorder) -> None:
    async with BusinessClient(recorder.url, "oa", SECRET) as oa:
        with pytest.raises(TypeError):
            await oa.push_card(users=["li"])
        with pytest.raises(TypeError):
            await oa.push_card({"title": "t"}, users=["li"], template_id="leave")
        with pytest.raises(ValueError):
            await oa.get_template("")  # an empty path segment
    assert recorder.calls == []
