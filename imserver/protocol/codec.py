"""JSON and MessagePack frame codecs, chosen per connection by subprotocol.

A codec turns one WebSocket message into one ``dict`` and back. Decoding is
strict — a frame must be a map with string keys — because everything after
this point trusts that shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import orjson

from imserver.errors import BadFrame, FrameTooLarge

JSON_SUBPROTOCOL = "imserver.v1.json"
MSGPACK_SUBPROTOCOL = "imserver.v1.msgpack"


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def text(self) -> bool:
        """True: frames go out as WebSocket Text frames; False: Binary frames."""

    def encode(self, frame: dict[str, Any]) -> bytes: ...

    def decode(self, data: bytes | str, max_bytes: int) -> dict[str, Any]: ...


def _check_frame(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BadFrame(f"a frame must be an object/map, got {type(obj).__name__}")
    for key in obj:
        if not isinstance(key, str):
            raise BadFrame("frame keys must be strings")
    return obj


@dataclass(slots=True, frozen=True)
class JsonCodec:
    name: str = JSON_SUBPROTOCOL
    text: bool = True

    def encode(self, frame: dict[str, Any]) -> bytes:
        return orjson.dumps(frame)

    def decode(self, data: bytes | str, max_bytes: int) -> dict[str, Any]:
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "replace"))
        if size > max_bytes:
            raise FrameTooLarge(f"frame is {size} bytes; the limit is {max_bytes}")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise BadFrame(f"not valid JSON: {e}") from None
        return _check_frame(obj)


@dataclass(slots=True, frozen=True)
class MsgpackCodec:
    name: str = MSGPACK_SUBPROTOCOL
    text: bool = False

    def encode(self, frame: dict[str, Any]) -> bytes:
        out: bytes = msgpack.packb(frame, use_bin_type=True)
        return out

    def decode(self, data: bytes | str, max_bytes: int) -> dict[str, Any]:
        if isinstance(data, str):
            raise BadFrame("msgpack frames must be binary WebSocket messages")
        if len(data) > max_bytes:
            raise FrameTooLarge(f"frame is {len(data)} bytes; the limit is {max_bytes}")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                timestamp=0,
            )
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
            raise BadFrame(f"not valid MessagePack: {e}") from None
        except Exception as e:  # msgpack raises assorted types for garbage input
            raise BadFrame(f"not valid MessagePack: {type(e).__name__}") from None
        return _check_frame(obj)


JSON = JsonCodec()
MSGPACK = MsgpackCodec()
CODECS: dict[str, Codec] = {JSON.name: JSON, MSGPACK.name: MSGPACK}
SUBPROTOCOLS = (JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL)


def codec_for(subprotocol: str | None) -> Codec:
    """The codec for a negotiated subprotocol; no subprotocol means JSON."""
    if subprotocol is None:
        return JSON
    return CODECS[subprotocol]
