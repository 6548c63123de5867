"""Stream mode's frames (docs/cards.md "Stream mode"): pure encode and parse.

A business system that cannot expose a callback URL holds a WebSocket to the
server instead; its callbacks arrive on it as ``callback`` frames and it
answers each with ``ack`` or ``nack``. This module is the wire format only —
values in, values out, no sockets — so every refusal is unit-tested; the
connection registry and the await-the-ack logic are ``cards.stream``, the
aiohttp handler is ``cards.stream_routes``.

Each ``callback`` frame carries the exact HTTP callback: the signed ``body``
as a JSON *string* (its UTF-8 bytes are what the signature covers, so the app
verifies it with the code it already has for HTTP callbacks, without
re-serialising) and the same ``X-Imserver-*`` ``headers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from imserver.errors import BadFrame, ImError, InvalidField, UnknownType

#: Largest frame an app may send (an ack's ``card_update`` included): a card is
#: at most 32 KiB, so twice that leaves room for escaping. Over it: close 1009.
MAX_FRAME_BYTES: Final = 64 * 1024
#: Longest ``error`` text a nack may carry (kept as the callback's last error).
MAX_NACK_ERROR: Final = 300
#: Longest delivery id accepted in a client frame (the server's are 16 hex digits).
MAX_ID_CHARS: Final = 64


class UnknownDelivery(ImError):
    """An ack or nack names no delivery waiting on this connection.

    Already answered, timed out (then retried under a new id) or never sent.
    """

    code, http_status = "unknown_delivery", 409


@dataclass(slots=True, frozen=True)
class Ack:
    """The app processed the delivery: as a 2xx to the HTTP callback."""

    id: str
    card_update: dict[str, Any] | None


@dataclass(slots=True, frozen=True)
class Nack:
    """The app refuses the delivery for now: as a non-2xx answer (retried with backoff)."""

    id: str
    error: str


def callback_frame(delivery_id: str, action_id: str, headers: dict[str, str], body: bytes) -> str:
    """The frame that delivers one outbox item; ``body`` is the signed callback body."""
    return orjson.dumps(
        {
            "type": "callback",
            "id": delivery_id,
            "action_id": action_id,
            "headers": headers,
            "body": body.decode(),
        }
    ).decode()


def hello_frame(app_id: str, heartbeat_s: float) -> str:
    """The first frame after the upgrade: the connection is registered and may receive."""
    return orjson.dumps(
        {
            "type": "hello",
            "app_id": app_id,
            "heartbeat_s": heartbeat_s,
            "max_frame_bytes": MAX_FRAME_BYTES,
        }
    ).decode()


def error_frame(err: ImError, frame_id: str | None = None) -> str:
    """A refused client frame: the connection stays open, nothing changed."""
    error: dict[str, Any] = {"type": "error", "code": err.code, "message": err.message}
    if frame_id is not None:
        error["id"] = frame_id
    if err.field:
        error["field"] = err.field
    return orjson.dumps(error).decode()


def frame_id_of(text: str) -> str | None:
    """The ``id`` of a frame, if it has a usable one: echoed in its error frame."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and len(value) <= MAX_ID_CHARS else None


def parse_client_frame(text: str) -> Ack | Nack:
    """An app's ``ack`` or ``nack``, or the error (``bad_frame``, ``unknown_type``,
    ``invalid_field``) its error frame carries."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadFrame("frame is not JSON") from None
    if not isinstance(doc, dict):
        raise BadFrame("frame must be a JSON object")
    kind = doc.get("type")
    if kind not in ("ack", "nack"):
        raise UnknownType(f"unknown frame type {str(kind)[:32]!r}; send 'ack' or 'nack'")
    delivery_id = doc.get("id")
    if not isinstance(delivery_id, str) or not 1 <= len(delivery_id) <= MAX_ID_CHARS:
        raise InvalidField(
            f"'id' must be the callback frame's id (1-{MAX_ID_CHARS} characters)", field="id"
        )
    if kind == "nack":
        error = doc.get("error", "")
        if not isinstance(error, str):
            raise InvalidField("'error' must be a string", field="error")
        return Nack(delivery_id, error[:MAX_NACK_ERROR])
    update = doc.get("card_update")
    if update is not None and not isinstance(update, dict):
        raise InvalidField("'card_update' must be an object or absent", field="card_update")
    return Ack(delivery_id, update)
