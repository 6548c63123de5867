"""Frame encoding for the two wire formats (protocol section 1).

Every frame is one map with string keys. JSON travels in WebSocket *text*
frames, MessagePack in *binary* frames; the encoding is chosen by subprotocol
and changes nothing else. Keeping this module free of I/O lets it be unit
tested exhaustively and reused by other tools (load generators, fuzzers).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Final

import msgpack

from .errors import CodecError

__all__ = [
    "CODECS",
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "codec_for_subprotocol",
    "get_codec",
]

JSON_SUBPROTOCOL: Final = "imserver.v1.json"
MSGPACK_SUBPROTOCOL: Final = "imserver.v1.msgpack"

Frame = dict[str, Any]


def _check_frame(obj: object) -> Frame:
    """Insist on the protocol's "one object with string keys" rule.

    Anything else (a list, a bare number, integer keys) is a ``bad_frame`` by
    the spec, so we reject it here instead of letting odd shapes leak into the
    client's dispatch logic.
    """
    if not isinstance(obj, dict):
        raise CodecError(f"frame is not an object but {type(obj).__name__}")
    for key in obj:
        if not isinstance(key, str):
            raise CodecError(f"frame has a non-string key {key!r}")
    return obj


class Codec(ABC):
    """One wire encoding: how a frame dict becomes a WebSocket message."""

    #: Short name accepted by :func:`get_codec` (``"json"``/``"msgpack"``).
    name: ClassVar[str]
    #: WebSocket subprotocol that selects this encoding.
    subprotocol: ClassVar[str]
    #: True if frames go in binary WebSocket messages, False for text.
    binary: ClassVar[bool]

    @abstractmethod
    def encode(self, frame: Frame) -> str | bytes:
        """Encode one frame; ``str`` means text frame, ``bytes`` binary frame."""

    @abstractmethod
    def decode(self, data: str | bytes | bytearray | memoryview) -> Frame:
        """Decode one WebSocket message into a frame dict or raise CodecError."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.subprotocol}>"


def _load_orjson() -> tuple[Callable[[Any], bytes], Callable[[str | bytes], Any]] | None:
    """Use orjson when installed: it is several times faster than ``json``.

    It is optional so the SDK installs with only websockets + msgpack.
    """
    try:
        import orjson
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return orjson.dumps, orjson.loads


_ORJSON = _load_orjson()


class JsonCodec(Codec):
    """``imserver.v1.json``: UTF-8 JSON objects in text frames."""

    name = "json"
    subprotocol = JSON_SUBPROTOCOL
    binary = False

    def encode(self, frame: Frame) -> str:
        if _ORJSON is not None:
            try:
                return _ORJSON[0](frame).decode("utf-8")
            except TypeError:
                # orjson refuses e.g. >64-bit ints; the stdlib may still cope.
                pass
        try:
            return json.dumps(frame, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"cannot encode frame as JSON: {exc}") from exc

    def decode(self, data: str | bytes | bytearray | memoryview) -> Frame:
        raw: str | bytes = bytes(data) if isinstance(data, bytearray | memoryview) else data
        try:
            obj = _ORJSON[1](raw) if _ORJSON is not None else json.loads(raw)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise CodecError(f"invalid JSON frame: {exc}") from exc
        return _check_frame(obj)


class MsgpackCodec(Codec):
    """``imserver.v1.msgpack``: MessagePack maps in binary frames."""

    name = "msgpack"
    subprotocol = MSGPACK_SUBPROTOCOL
    binary = True

    def encode(self, frame: Frame) -> bytes:
        try:
            packed = msgpack.packb(frame, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode frame as MessagePack: {exc}") from exc
        if not isinstance(packed, bytes):  # pragma: no cover - msgpack always returns bytes
            raise CodecError("msgpack.packb did not return bytes")
        return packed

    def decode(self, data: str | bytes | bytearray | memoryview) -> Frame:
        if isinstance(data, str):
            # A text frame on the binary subprotocol is a protocol violation.
            raise CodecError("expected a binary frame for MessagePack, got text")
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises a zoo of types (ExtraData, ValueError, ...)
            raise CodecError(f"invalid MessagePack frame: {exc}") from exc
        return _check_frame(obj)


#: The codecs by short name; subprotocol names are accepted by get_codec too.
CODECS: Final[dict[str, Codec]] = {"json": JsonCodec(), "msgpack": MsgpackCodec()}


def get_codec(name: str) -> Codec:
    """Look up a codec by short name (``json``) or subprotocol (``imserver.v1.json``)."""
    codec = CODECS.get(name)
    if codec is not None:
        return codec
    for codec in CODECS.values():
        if codec.subprotocol == name:
            return codec
    raise ValueError(f"unknown codec {name!r}; expected 'json' or 'msgpack'")


def codec_for_subprotocol(subprotocol: str | None) -> Codec:
    """Codec the server will use for a negotiated subprotocol.

    Per the protocol, a connection without a subprotocol is treated as JSON.
    """
    if subprotocol is None:
        return CODECS["json"]
    return get_codec(subprotocol)
