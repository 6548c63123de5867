"""What the bot tests share: checking that a refused business event changed nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bots.demo.oa_system import OASystem
from bots.runtime.model import track_id
from bots.runtime.runner import BotRuntime
from imserver_sdk import BusinessClient, BusinessError, Client


async def assert_refused_and_nothing_pushed(
    *,
    system: OASystem,
    events_url: str,
    event: dict[str, Any],
    expect: tuple[int, str, str | None],
    app: BusinessClient,
    runtime: BotRuntime,
    bot: str,
    holder: Client,
    conv: str,
) -> None:
    """``event`` gets ``(status, code, field)`` and a message; no card, no stored row.

    ``holder`` (whose notice conversation is ``conv``) would have received the
    card had the event been accepted.
    """
    status, code, field = expect
    eid = event["event_id"]
    got, answer = await system.send_event(events_url, event)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"].get("field") == field and answer["error"]["message"]
    with pytest.raises(BusinessError) as missing:
        await app.get_card(track_id(eid))
    assert missing.value.status == 404
    await asyncio.sleep(0.2)
    assert [m for m in holder.messages(conv) if m.get("kind") == "card"] == []
    assert runtime.store.counts(bot) == {}
    assert runtime.store.event(bot, eid) is None
