"""App events on the callback URL (docs/cards.md "App events"): parsing and the handler.

``parse_delivery``/``AppEvent`` are tested purely; ``callback_handler`` with
``on_event`` runs on a real aiohttp server on 127.0.0.1, driven by signed
POSTs the way the server's at-least-once outbox sends them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from imserver_sdk import (
    AppEvent,
    CallbackAction,
    SignatureError,
    callback_handler,
    is_app_event,
    parse_callback,
    parse_delivery,
    sign_request,
)

SECRET = "oa-callback-secret-0123456789abcdef"

EVENT: dict[str, Any] = {
    "type": "event",
    "event": "card_read",
    "event_id": "ev_0123",
    "app_id": "oa",
    "card_id": "c_1",
    "out_track_id": "leave-2026-0042",
    "at": 1_764_400_000_123,
    "user": "li",
    "conv": "n:oa:li",
    "seq": 3,
}
ACTION: dict[str, Any] = {
    "type": "card.action",
    "app_id": "oa",
    "action_id": "b1f0",
    "card_id": "c_1",
    "out_track_id": "leave-2026-0042",
    "version": 2,
    "actor": "li",
    "action": "approve",
    "decision": "approve",
    "inputs": {},
    "state": "approved",
    "at": 1_764_400_000_123,
}


def signed(doc: Any) -> tuple[dict[str, str], bytes]:
    body = json.dumps(doc, ensure_ascii=False).encode()
    return sign_request("oa", SECRET, body), body


def test_parse_delivery_tells_events_from_actions() -> None:
    headers, body = signed({**EVENT, "newer_key": 1})
    event = parse_delivery(SECRET, headers, body)
    assert isinstance(event, AppEvent)
    assert (event.event, event.event_id, event.card_id, event.notice_id, event.user) == (
        "card_read",
        "ev_0123",
        "c_1",
        None,
        "li",
    )
    assert event.raw["seq"] == 3 and event.raw["newer_key"] == 1
    headers, body = signed(ACTION)
    action = parse_delivery(SECRET, headers, body)
    assert isinstance(action, CallbackAction) and action.action_id == "b1f0"
    assert is_app_event(EVENT) and not is_app_event(ACTION)


def test_a_notice_event_names_the_notice() -> None:
    doc = {k: v for k, v in EVENT.items() if k not in ("card_id", "out_track_id")}
    event = AppEvent.from_dict({**doc, "event": "delivered", "notice_id": "nt_9"})
    assert (event.card_id, event.out_track_id, event.notice_id) == (None, None, "nt_9")


def test_parse_delivery_verifies_first() -> None:
    headers, body = signed(EVENT)
    with pytest.raises(SignatureError):
        parse_delivery("another-secret-0123456789abcdefgh", headers, body)
    with pytest.raises(ValueError, match="unsupported callback type"):
        parse_callback(SECRET, headers, body)  # the action-only parser refuses an event


@pytest.mark.parametrize(
    "change",
    [
        {"event_id": ""},
        {"event": 5},
        {"at": "now"},
        {"at": True},
        {"user": 7},
        {"card_id": None},
    ],
)
def test_malformed_events_are_refused(change: dict[str, Any]) -> None:
    doc = {**EVENT, **change}
    if change == {"card_id": None}:
        doc.pop("out_track_id")
    with pytest.raises(ValueError):
        AppEvent.from_dict(doc)


async def _post(session: aiohttp.ClientSession, url: str, doc: Any) -> tuple[int, Any]:
    headers, body = signed(doc)
    headers["Content-Type"] = "application/json"
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def _serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/cb", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/cb"


def test_handler_calls_on_event_once_and_never_answers_a_card_update() -> None:
    events: list[AppEvent] = []
    actions: list[CallbackAction] = []
    failures = [RuntimeError("db down")]

    async def on_event(e: AppEvent) -> None:
        if failures:
            raise failures.pop()
        events.append(e)

    async def on_action(a: CallbackAction) -> dict[str, Any] | None:
        actions.append(a)
        return {"status": {"text": "已同意"}}

    async def main() -> None:
        runner, url = await _serve(callback_handler(SECRET, on_action, on_event=on_event))
        try:
            async with aiohttp.ClientSession() as s:
                status, _ = await _post(s, url, EVENT)
                assert status == 500  # raised: not remembered, the server redelivers
                assert await _post(s, url, EVENT) == (200, {})
                assert await _post(s, url, EVENT) == (200, {})  # a repeat: dropped
                # An action whose id equals an event id is still its own delivery.
                answer = await _post(s, url, {**ACTION, "action_id": "ev_0123"})
                assert answer == (200, {"card_update": {"status": {"text": "已同意"}}})
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert [e.event_id for e in events] == ["ev_0123"]
    assert [a.action_id for a in actions] == ["ev_0123"]


def test_handler_without_on_event_acknowledges_events() -> None:
    async def on_action(a: CallbackAction) -> None:
        raise AssertionError("an event is not an action")

    async def main() -> None:
        runner, url = await _serve(callback_handler(SECRET, on_action))
        try:
            async with aiohttp.ClientSession() as s:
                assert await _post(s, url, EVENT) == (200, {})
                status, answer = await _post(s, url, {**EVENT, "event_id": ""})
                assert (status, answer["error"]["code"]) == (400, "invalid_callback")
        finally:
            await runner.cleanup()

    asyncio.run(main())
