"""Python SDK for the imserver IM protocol (docs/protocol.md).

Quick start::

    from imserver_sdk import Client

    async with Client("ws://127.0.0.1:8700/", token) as c:
        ack = await c.send_text("hi", to="bob")
        ev = await c.next_event("message")

This package deliberately never imports the server package ``imserver``: it
is what third-party clients install, and it doubles as the executable
reference for the wire protocol.
"""

from __future__ import annotations

from .client import Ack, Client, Event, TokenProvider
from .codec import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    Codec,
    JsonCodec,
    MsgpackCodec,
    codec_for_subprotocol,
    get_codec,
)
from .dedupe import SeqStatus, SeqTracker
from .errors import ClientClosed, CodecError, ImserverError, ProtocolError, ServerError

__version__ = "0.1.0"

__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "Ack",
    "Client",
    "ClientClosed",
    "Codec",
    "CodecError",
    "Event",
    "ImserverError",
    "JsonCodec",
    "MsgpackCodec",
    "ProtocolError",
    "SeqStatus",
    "SeqTracker",
    "ServerError",
    "TokenProvider",
    "__version__",
    "codec_for_subprotocol",
    "get_codec",
]

# Business-system side (docs/cards.md): signed app API client and callbacks.
from .business import BusinessClient, BusinessError
from .callbacks import (
    AppEvent,
    CallbackAction,
    callback_handler,
    is_app_event,
    parse_callback,
    parse_delivery,
)
from .signing import NonceCache, SignatureError, sign_request, verify_signature
from .stream import AppStream

__all__ += [
    "AppEvent",
    "AppStream",
    "BusinessClient",
    "BusinessError",
    "CallbackAction",
    "NonceCache",
    "SignatureError",
    "callback_handler",
    "is_app_event",
    "parse_callback",
    "parse_delivery",
    "sign_request",
    "verify_signature",
]
