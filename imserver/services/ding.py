"""DING (钉消息): urgent messages every recipient must confirm.

An urgent message (or card) stores one row per recipient with the message
itself. Recipients confirm with ``ding.confirm``; the sender asks who has and
has not (``ding.status``). A background loop re-notifies the unconfirmed every
``chat.ding_interval_s``, at most ``chat.ding_max_renotify`` times, by pushing
a ``ding`` event with the message again. The rows live in the store, so the
schedule survives restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from imserver.bus.base import TOPIC_DELIVER, Bus
from imserver.config import ChatConfig
from imserver.due_loop import DueLoop
from imserver.errors import Forbidden, NoSuchDing
from imserver.protocol.frames import event_frame
from imserver.services.caller import Caller
from imserver.services.membership import MembershipCache
from imserver.store.base import DeadlineStore, Store

log = logging.getLogger(__name__)

BATCH = 200


class DingStore(Store, DeadlineStore, Protocol):
    pass


class DingService:
    def __init__(
        self,
        store: DingStore,
        bus: Bus,
        members: MembershipCache,
        config: ChatConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._members = members
        self._interval_ms = int(config.ding_interval_s * 1000)
        self._max = config.ding_max_renotify
        #: ``chat.ding_lease_s``: a node that dies holding due DINGs delays them this long.
        self.lease_ms = int(config.ding_lease_s * 1000)
        self._clock = clock
        self._loop = DueLoop("ding", self.run_once, store.next_ding_due, clock)
        #: Told ``(conv, seq, user, sender)`` after a confirmation is stored (the cards
        #: plug-in reports ``ding_confirmed`` app events); set by the composition root.
        self.on_confirmed: Callable[[str, int, str, str], Awaitable[None]] | None = None

    async def confirm(self, caller: Caller, conv: str, seq: int) -> dict[str, Any]:
        await self._members.require_member(conv, caller.user)
        now = int(self._clock() * 1000)
        sender = await self._store.confirm_ding(conv, seq, caller.user, now)
        if sender is None:
            raise NoSuchDing(f"message {seq} in {conv} is not a DING for you")
        if self.on_confirmed is not None:
            await self.on_confirmed(conv, seq, caller.user, sender)
        recipients = [caller.user] if sender.startswith("app:") else [caller.user, sender]
        await self._bus.publish(
            TOPIC_DELIVER,
            {
                "recipients": recipients,
                "frame": event_frame(
                    "ding_confirmed", {"conv": conv, "seq": seq, "user": caller.user}
                ),
            },
        )
        return {"conv": conv, "seq": seq, "confirmed": True}

    async def status(self, caller: Caller, conv: str, seq: int) -> dict[str, Any]:
        await self._members.require_member(conv, caller.user)
        st = await self._store.ding_status(conv, seq)
        if st is None:
            raise NoSuchDing(f"message {seq} in {conv} is not a DING")
        if st.sender != caller.user:
            raise Forbidden("only the sender sees who has confirmed")
        return {"conv": conv, "seq": seq, "confirmed": st.confirmed, "unconfirmed": st.unconfirmed}

    # -- re-notification -----------------------------------------------------
    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def run_once(self) -> int:
        now = int(self._clock() * 1000)
        due = await self._store.due_dings(now, self.lease_ms, BATCH)
        for d in due:
            msg = await self._store.get_message(d.conv, d.seq)
            notified = d.notified + 1
            next_at = now + self._interval_ms if notified < self._max else None
            await self._store.ding_renotified(d.conv, d.seq, d.user, notified, next_at)
            if msg is None:
                continue
            await self._bus.publish(
                TOPIC_DELIVER,
                {
                    "recipients": [d.user],
                    "frame": event_frame("ding", {"message": msg.to_wire(), "renotify": notified}),
                },
            )
        return len(due)
