"""Route each typed request to the service that answers it.

The core's requests are matched here; a plug-in's (``cards/``: ``card.act``,
``card.get``, ``todo``) are ``ExtensionRequest``s answered by the handler it
registered for their class (``gateway/extensions.py``), and its sync parts add
their keys to every ``sync`` answer. This module imports no plug-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imserver.errors import AlreadyAuthenticated
from imserver.gateway.extensions import RequestExtensions
from imserver.gateway.session import Session
from imserver.protocol import requests as rq
from imserver.services.address_book import AddressBook
from imserver.services.caller import Caller
from imserver.services.chat import ChatService
from imserver.services.ding import DingService
from imserver.services.groups import GroupService
from imserver.services.presence import PresenceService


class Dispatcher:
    def __init__(
        self,
        chat: ChatService,
        groups: GroupService,
        presence: PresenceService,
        dings: DingService,
        address_book: AddressBook,
        extensions: RequestExtensions | None = None,
    ) -> None:
        self._dings = dings
        self._book = address_book
        self._chat = chat
        self._groups = groups
        self._presence = presence
        extensions = extensions if extensions is not None else RequestExtensions()
        #: The table the gateway parses with: the core's types and the plug-ins'.
        self.parsers: Mapping[str, rq.Parser] = extensions.parsers()
        self._extension_handlers = extensions.handlers()
        self._sync_answers = extensions.sync_answers()

    async def handle(self, session: Session, req: rq.Request) -> dict[str, Any]:
        caller = Caller(session.user, session.device)
        chat, groups = self._chat, self._groups
        match req:
            case rq.Send():
                return await chat.send(caller, req)
            case rq.Sync():
                result = await chat.sync(caller, req)
                for answer, part in zip(self._sync_answers, req.parts, strict=True):
                    result.update(await answer(caller, part))
                return result
            case rq.ExtensionRequest():  # parsed with the plug-in's parser: it has a handler
                return await self._extension_handlers[type(req)](caller, req)
            case rq.DingConfirm():
                return await self._dings.confirm(caller, req.conv, req.seq)
            case rq.DingStatusReq():
                return await self._dings.status(caller, req.conv, req.seq)
            case rq.Read():
                return await chat.read(caller, req)
            case rq.History():
                return await chat.history(caller, req)
            case rq.ReadStatus():
                return await chat.read_status(caller, req)
            case rq.Unread():
                return await chat.unread(caller)
            case rq.Recall():
                return await chat.recall(caller, req)
            case rq.GroupCreate():
                return await groups.create(caller, req)
            case rq.GroupRename():
                return await groups.rename(caller, req)
            case rq.GroupAdd():
                return await groups.add(caller, req)
            case rq.GroupRemove():
                return await groups.remove(caller, req)
            case rq.GroupLeave():
                return await groups.leave(caller, req)
            case rq.GroupRole():
                return await groups.set_role(caller, req)
            case rq.GroupMembers():
                return await groups.members(caller, req)
            case rq.GroupList():
                return await groups.list(caller)
            case rq.PresenceQuery():
                return await self._presence.query(req.users)
            case rq.PresenceSubscribe():
                return await self._presence.subscribe(session, req.users)
            case rq.PresenceUnsubscribe():
                return await self._presence.unsubscribe(session, req.users)
            case rq.DirectoryUsers():
                return await self._book.users(caller, req.users)
            case rq.DirectoryUnit():
                return await self._book.unit(caller, req.unit, req.recursive, req.cursor, req.limit)
            case rq.DirectorySearch():
                return await self._book.search(caller, req.q, req.unit, req.cursor, req.limit)
            case rq.DirectoryChanges():
                return await self._book.changes(caller, req.since, req.limit)
            case rq.Auth():  # re-authentication is the gateway's (Gateway._reauthenticate)
                raise AlreadyAuthenticated("this connection is already authenticated")
            case rq.Ping():  # answered by the gateway with a pong frame
                return {}
        raise AssertionError(f"unhandled request {req!r}")  # pragma: no cover
