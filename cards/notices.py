"""Work notices: an app's titled markdown message to people, optionally urgent (DING).

A notice is a plain message (kind ``notice``) in each person's notice
conversation with the app, or in a group: persistent, synced and pushed like
any message, with no card state behind it. Urgent ones must be confirmed by
each reader; ``ding_status`` tells the app who has.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from cards.recipients import Recipients, plan_delivery, readers
from cards.store import FullStore
from imserver.config import CardsConfig
from imserver.errors import InvalidField, NoSuchDing
from imserver.protocol.fields import Fields
from imserver.services.chat import ChatService, now_ms
from imserver.store.records import AppRecord, NewMessage


class Notices:
    def __init__(
        self,
        store: FullStore,
        chat: ChatService,
        recipients: Recipients,
        limits: CardsConfig,
        ding_interval_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._chat = chat
        self._recipients = recipients
        self._limits = limits
        self._ding_interval_ms = ding_interval_ms
        self._clock = clock

    async def send(self, app: AppRecord, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidField("body must be a JSON object", field="body")
        f = Fields(body)
        title = f.req_string("title", max_len=self._limits.max_title_chars)
        text = f.req_string("text", max_len=self._limits.max_body_chars)
        urgent = f.boolean("urgent")
        # The notice text is markdown the client renders: matched as read, too.
        await self._chat.content.check(
            f"app:{app.app_id}", "notice", "notice", [title], markdown=[text]
        )
        users, groups = await self._recipients.resolve(app, body.get("to"))
        now = now_ms(self._clock)
        notice_id = "nt_" + secrets.token_urlsafe(12)
        content = {
            "title": title,
            "text": text,
            "urgent": urgent,
            "app_id": app.app_id,
            "notice_id": notice_id,
        }
        sender = f"app:{app.app_id}"
        ding_next_at = now + self._ding_interval_ms

        def message(conv: str, ding_to: tuple[str, ...]) -> NewMessage:
            return NewMessage(
                conv,
                sender,
                "app",
                "notice",
                content,
                now,
                ding_to=ding_to if urgent else (),
                ding_next_at=ding_next_at,
                card_id=notice_id,
            )

        plan = plan_delivery(app, users, groups, self._limits.broadcast_min_holders, message)
        stored = await self._store.deliver_notice(plan.messages, plan.convs, now)
        reached: set[str] = set()
        for msg in stored:
            recipients = readers(msg.conv, plan.readers)
            reached.update(recipients)
            await self._chat.publish_message(msg, tuple(recipients))
        return {"notice_id": notice_id, "recipients": len(reached)}

    async def ding_status(self, app: AppRecord, notice_id: str) -> dict[str, Any]:
        confirmed, unconfirmed = await self._store.card_ding_status(
            notice_id, sender=f"app:{app.app_id}"
        )
        if not confirmed and not unconfirmed:
            raise NoSuchDing(f"app {app.app_id} sent no urgent notice {notice_id!r}")
        return {"notice_id": notice_id, "confirmed": confirmed, "unconfirmed": unconfirmed}
