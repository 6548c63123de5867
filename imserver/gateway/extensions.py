"""What plug-ins add to the WebSocket protocol: request types and ``sync`` parts.

The core must not import what plugs into it (``cards/`` builds on
``imserver/``, never the other way). So a plug-in registers here, and the
composition root (``imserver/app.py``) wires it: each request type is a
``type`` name with a pure parser (``Fields`` → an ``ExtensionRequest``) and an
async handler; a sync part reads its own fields of a ``sync`` frame and adds
its keys to the answer (the cards plug-in: ``cards_since`` → ``cards``).

The request loop pays one dict lookup for this: the gateway parses with one
merged table (``parsers()``), the dispatcher finds a plug-in's handler by the
request's class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from imserver.config import LimitsConfig
from imserver.protocol import requests as rq
from imserver.protocol.fields import Fields
from imserver.services.caller import Caller

R = TypeVar("R", bound=rq.ExtensionRequest)
T = TypeVar("T")

Answer = dict[str, Any]
#: Answers one plug-in request for the caller; the dict is the result frame's data.
RequestHandler = Callable[[Caller, Any], Awaitable[Answer]]
#: Answers a sync part: the keys it adds to the ``sync`` result.
SyncAnswer = Callable[[Caller, Any], Awaitable[Answer]]


class RequestExtensions:
    """The registry: fill it before building the ``Dispatcher``, which freezes it.

    Registering a name the core or another plug-in already answers is a
    programming error and fails at start, not on the first such request.
    """

    def __init__(self) -> None:
        self._parsers: dict[str, rq.Parser] = {}
        self._handlers: dict[type[rq.ExtensionRequest], RequestHandler] = {}
        self._sync_readers: list[rq.SyncPartReader] = []
        self._sync_answers: list[SyncAnswer] = []
        self._frozen = False

    def add_request(
        self,
        type_name: str,
        request_class: type[R],
        parse: Callable[[Fields, LimitsConfig], R],
        handle: Callable[[Caller, R], Awaitable[Answer]],
    ) -> None:
        """Answer frames of ``type_name``: ``parse`` them (pure), then ``handle``."""
        self._check_open()
        if type_name in rq.CORE_PARSERS or type_name in self._parsers:
            raise ValueError(f"request type {type_name!r} is already registered")
        if request_class in self._handlers:
            raise ValueError(f"{request_class.__name__} already has a handler")
        self._parsers[type_name] = parse
        self._handlers[request_class] = handle

    def add_sync_part(
        self,
        read: Callable[[Fields, LimitsConfig], T],
        answer: Callable[[Caller, T], Awaitable[Answer]],
    ) -> None:
        """Let ``sync`` carry this plug-in's fields (``read``) and answer them (``answer``)."""
        self._check_open()
        self._sync_readers.append(read)
        self._sync_answers.append(answer)

    def parsers(self) -> Mapping[str, rq.Parser]:
        """The one table the gateway parses with: the core's types, then the plug-ins'."""
        self._frozen = True
        table: dict[str, rq.Parser] = {**rq.CORE_PARSERS, **self._parsers}
        table["sync"] = rq.sync_parser(self._sync_readers)
        return table

    def handlers(self) -> Mapping[type[rq.ExtensionRequest], RequestHandler]:
        """The plug-ins' handlers by request class."""
        self._frozen = True
        return dict(self._handlers)

    def sync_answers(self) -> tuple[SyncAnswer, ...]:
        """The sync parts' answers, in the order their readers fill ``Sync.parts``."""
        self._frozen = True
        return tuple(self._sync_answers)

    def request_types(self) -> tuple[str, ...]:
        """The plug-ins' request type names, in registration order."""
        return tuple(self._parsers)

    def _check_open(self) -> None:
        if self._frozen:
            raise RuntimeError("register plug-in requests before building the Dispatcher")
