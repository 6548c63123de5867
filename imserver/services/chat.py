"""Chat: send, recall, sync, history, read cursors and receipts.

The message path lives in :meth:`ChatService.send`: authorise, check content,
persist (which assigns ``seq``), then publish one event for every member's
devices. The store call is the commit point: anything before it changes
nothing, so every error leaves no trace.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from imserver.bus.base import TOPIC_DELIVER, Bus
from imserver.config import Config
from imserver.errors import (
    Forbidden,
    InvalidField,
    NoSuchFile,
    NoSuchMessage,
    NoSuchUser,
    NotMember,
    RecallWindowPassed,
)
from imserver.metrics import Metrics
from imserver.protocol import requests as rq
from imserver.protocol.frames import event_frame
from imserver.services.caller import Caller
from imserver.services.content_policy import ContentPolicy
from imserver.services.membership import MembershipCache, dm_id, dm_parties
from imserver.store.base import Store
from imserver.store.records import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER, Message, NewMessage

RECALLABLE_KINDS = ("text", "file")
MANAGERS = (ROLE_OWNER, ROLE_ADMIN)


def now_ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


class ChatService:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        members: MembershipCache,
        config: Config,
        metrics: Metrics,
        content: ContentPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._members = members
        self._limits = config.limits
        self._recall_window_ms = int(config.chat.recall_window_s * 1000)
        self._ding_interval_ms = int(config.chat.ding_interval_s * 1000)
        self._metrics = metrics
        self._clock = clock
        #: Completes message objects read from the store (cards attach their
        #: latest view); set by the composition root.
        self.enricher: Callable[[list[dict[str, Any]], str], Awaitable[None]] | None = None
        #: Told ``(conv, user, before, after)`` when a ``read`` moved a cursor (the cards
        #: plug-in reports ``card_read`` app events); set by the composition root.
        self.on_read: Callable[[str, str, int, int], Awaitable[None]] | None = None
        self.content = content

    async def publish_message(self, message: Message, recipients: tuple[str, ...]) -> None:
        """Publish a stored message to every device of ``recipients``."""
        self._metrics.messages.labels(message.kind).inc()
        # conv and seq let a networked bus route by conversation and fill gaps
        # from the store (bus/redis.py); the hub ignores them.
        await self._bus.publish(
            TOPIC_DELIVER,
            {
                "recipients": list(recipients),
                "frame": event_frame("message", message.to_wire()),
                "conv": message.conv,
                "seq": message.seq,
            },
        )

    async def wire_for(self, messages: list[Message], viewer: str) -> list[dict[str, Any]]:
        """Stored messages as ``viewer`` sees them (a networked bus's gap fill uses this)."""
        return await self._wire(messages, viewer)

    async def _wire(self, messages: list[Message], viewer: str) -> list[dict[str, Any]]:
        out = [m.to_wire() for m in messages]
        if self.enricher is not None:
            await self.enricher(out, viewer)
        return out

    # -- sending -------------------------------------------------------------
    async def send(self, caller: Caller, req: rq.Send) -> dict[str, Any]:
        conv, new_dm = await self._resolve_target(caller, req)
        if new_dm is not None:
            kind, roles = "dm", dict.fromkeys(new_dm, ROLE_MEMBER)
        else:
            entry = await self._members.require_member(conv, caller.user)
            kind, roles = entry.conv.kind, entry.roles
            if kind == "notice":
                raise Forbidden("notice conversations are read-only")
            if entry.conv.archived:
                raise Forbidden("this group was archived by an administrator; it is read-only")
        if req.mentions:
            strangers = [u for u in req.mentions if u not in roles]
            if strangers:
                raise InvalidField(
                    f"mentioned users are not members: {', '.join(strangers[:10])}",
                    field="body.mentions",
                )
        if req.mention_all and (kind != "group" or roles[caller.user] not in MANAGERS):
            raise Forbidden("only group owners and admins may @all")
        await self.content.check(
            caller.user,
            "message",
            conv,
            [req.body["text"]] if req.kind == "text" else [req.body["file"]["name"]],
        )
        if req.kind == "file":
            file_id = req.body["file"]["id"]
            meta = await self._store.get_file(file_id)
            if meta is None or not await self._store.file_visible_to(file_id, caller.user):
                raise NoSuchFile(f"no file {file_id}; upload it first")
            req.body["file"]["size"] = meta.size  # the stored size is the truth
            # So is the stored type, recorded from the upload: a client-chosen
            # ``mime`` would be free text shown to every member, past the guard.
            req.body["file"]["mime"] = meta.mime
        now = now_ms(self._clock)
        result = await self._store.append_message(
            NewMessage(
                conv=conv,
                sender=caller.user,
                device=caller.device,
                kind=req.kind,
                body=req.body,
                ts=now,
                client_msg_id=req.client_msg_id,
                ding_to=tuple(u for u in roles if u != caller.user) if req.urgent else (),
                ding_next_at=now + self._ding_interval_ms,
            ),
            create_dm=new_dm,
        )
        msg = result.message
        if new_dm is not None:
            self._members.invalidate(conv)
        if not result.duplicate:
            await self.publish_message(msg, tuple(roles))
        return {
            "conv": msg.conv,
            "seq": msg.seq,
            "ts": msg.ts,
            "client_msg_id": msg.client_msg_id,
            "duplicate": result.duplicate,
        }

    async def _resolve_target(
        self, caller: Caller, req: rq.Send
    ) -> tuple[str, tuple[str, str] | None]:
        """The conversation id, and its two parties if it is a 1:1 not yet created.

        Nothing is written here: a first 1:1 message creates its conversation
        inside the store's append transaction, so a refused send leaves no trace.
        """
        if req.to is not None:
            peer = req.to
            conv = dm_id(caller.user, peer)
        else:
            assert req.conv is not None
            conv = req.conv
            if not conv.startswith("dm:"):
                return conv, None
            a, b = dm_parties(conv)
            if caller.user not in (a, b):
                # Do not reveal whether someone else's 1:1 conversation exists.
                raise NotMember(f"you are not a member of {conv}")
            peer = b if caller.user == a else a
        if peer == caller.user:
            raise InvalidField("you cannot send a 1:1 message to yourself", field="to")
        if await self._members.get(conv) is not None:
            return conv, None
        if peer not in await self._store.existing_users([peer]):
            raise NoSuchUser(f"no user {peer!r}")
        return conv, dm_parties(conv)

    async def recall(self, caller: Caller, req: rq.Recall) -> dict[str, Any]:
        entry = await self._members.require_member(req.conv, caller.user)
        target = await self._store.get_message(req.conv, req.seq)
        if target is None:
            raise NoSuchMessage(f"no message {req.seq} in {req.conv}")
        if target.sender != caller.user:
            raise Forbidden("only the sender may recall a message")
        if target.kind not in RECALLABLE_KINDS or target.recalled:
            raise Forbidden("this message cannot be recalled")
        now = now_ms(self._clock)
        if now - target.ts > self._recall_window_ms:
            raise RecallWindowPassed(
                f"messages can be recalled within {self._recall_window_ms // 1000} s of sending"
            )
        notice = NewMessage(
            conv=req.conv,
            sender=caller.user,
            device=caller.device,
            kind="recall",
            body={"target_seq": req.seq},
            ts=now,
        )
        msg = await self._store.recall_message(req.conv, req.seq, notice)
        await self.publish_message(msg, entry.users)
        return {"conv": msg.conv, "seq": msg.seq, "target_seq": req.seq}

    # -- reading -------------------------------------------------------------
    async def sync(self, caller: Caller, req: rq.Sync) -> dict[str, Any]:
        states = await self._store.conversations_of(caller.user)
        out: list[dict[str, Any]] = []
        more = False
        for st in states:
            have = req.since.get(st.conv, 0)
            if st.last_seq <= have:
                continue
            if len(out) >= self._limits.sync_page_conversations:
                more = True
                break
            messages = await self._store.messages_after(st.conv, have, req.limit)
            conv_more = bool(messages) and messages[-1].seq < st.last_seq
            more = more or conv_more
            out.append(
                {
                    "conv": st.conv,
                    "kind": st.kind,
                    "name": st.name,
                    "peer": _peer(st.conv, caller.user) if st.kind == "dm" else None,
                    "last_seq": st.last_seq,
                    "read_seq": st.read_seq,
                    "unread": max(0, st.last_seq - st.read_seq),
                    "messages": await self._wire(messages, caller.user),
                    "more": conv_more,
                }
            )
        return {"conversations": out, "more": more}

    async def history(self, caller: Caller, req: rq.History) -> dict[str, Any]:
        await self._members.require_member(req.conv, caller.user)
        messages = await self._store.messages_before(req.conv, req.before_seq, req.limit)
        more = bool(messages) and messages[0].seq > 1
        return {"messages": await self._wire(messages, caller.user), "more": more}

    async def read(self, caller: Caller, req: rq.Read) -> dict[str, Any]:
        """Move the cursor; tell the reader's other devices (and a 1:1 peer) only if it moved.

        The reading device learns the cursor from the result, so the event
        skips it; a ``read`` that moves nothing (a lower ``seq``) emits nothing.
        """
        entry = await self._members.require_member(req.conv, caller.user)
        cursor = await self._store.move_read_cursor(req.conv, caller.user, req.seq)
        conv = await self._store.get_conversation(req.conv)
        last_seq = conv.last_seq if conv is not None else cursor.seq
        if cursor.moved:
            await self._publish_read(caller, entry.conv.kind, req.conv, cursor.seq)
            if self.on_read is not None and entry.conv.kind == "notice":
                await self.on_read(req.conv, caller.user, cursor.before, cursor.seq)
        return {"conv": req.conv, "read_seq": cursor.seq, "unread": max(0, last_seq - cursor.seq)}

    async def _publish_read(self, caller: Caller, kind: str, conv: str, seq: int) -> None:
        recipients = [caller.user]
        if kind == "dm":
            recipients.append(_peer(conv, caller.user))
        await self._bus.publish(
            TOPIC_DELIVER,
            {
                "recipients": recipients,
                "frame": event_frame("read", {"conv": conv, "user": caller.user, "seq": seq}),
                "skip_device": [caller.user, caller.device],
            },
        )

    async def read_status(self, caller: Caller, req: rq.ReadStatus) -> dict[str, Any]:
        entry = await self._members.require_member(req.conv, caller.user)
        target = await self._store.get_message(req.conv, req.seq)
        if target is None:
            raise NoSuchMessage(f"no message {req.seq} in {req.conv}")
        # An app's broadcast (b:) holders do not learn who else received it, nor who
        # read it: in a notice conversation each member sees only their own state.
        only_own = entry.conv.kind == "notice"
        read: list[str] = []
        unread: list[str] = []
        for m in await self._store.members(req.conv):
            if m.user == target.sender or (only_own and m.user != caller.user):
                continue
            (read if m.read_seq >= req.seq else unread).append(m.user)
        return {"conv": req.conv, "seq": req.seq, "read": read, "unread": unread}

    async def unread(self, caller: Caller) -> dict[str, Any]:
        convs = [
            {
                "conv": st.conv,
                "unread": st.last_seq - st.read_seq,
                "last_seq": st.last_seq,
                "read_seq": st.read_seq,
            }
            for st in await self._store.conversations_of(caller.user)
            if st.last_seq > st.read_seq
        ]
        return {"total": sum(c["unread"] for c in convs), "conversations": convs}


def _peer(conv: str, user: str) -> str:
    a, b = dm_parties(conv)
    return b if user == a else a
