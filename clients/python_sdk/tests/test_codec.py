"""Unit tests for the JSON / MessagePack frame codecs."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from imserver_sdk import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    CodecError,
    JsonCodec,
    MsgpackCodec,
    codec_for_subprotocol,
    get_codec,
)
from imserver_sdk.codec import CODECS

FRAMES: list[dict[str, Any]] = [
    {"type": "ping", "id": 3},
    {"type": "auth", "id": 1, "token": "eyJhbGciOiJIUzI1NiJ9.e30.x"},
    {
        "type": "send",
        "id": 8,
        "conv": "g:Yq3",
        "client_msg_id": "b7c1f0e2",
        "kind": "text",
        "body": {"text": "@bob 请审阅 📎", "mentions": ["bob"], "mention_all": False},
    },
    {"type": "sync", "id": 2, "since": {"dm:alice:bob": 17, "g:Yq3": 40}},
    {"type": "error", "id": None, "code": "bad_frame", "message": "x", "field": None},
    {"type": "result", "id": "str-id", "data": {"ts": 1764150000123, "f": 1.5, "l": []}},
]


def test_subprotocol_names() -> None:
    assert JSON_SUBPROTOCOL == "imserver.v1.json"
    assert MSGPACK_SUBPROTOCOL == "imserver.v1.msgpack"
    assert JsonCodec.subprotocol == JSON_SUBPROTOCOL
    assert MsgpackCodec.subprotocol == MSGPACK_SUBPROTOCOL
    assert not JsonCodec.binary
    assert MsgpackCodec.binary


@pytest.mark.parametrize("name", ["json", "msgpack"])
@pytest.mark.parametrize("frame", FRAMES)
def test_roundtrip(name: str, frame: dict[str, Any]) -> None:
    codec = get_codec(name)
    assert codec.decode(codec.encode(frame)) == frame


def test_json_encodes_to_text_and_is_plain_json() -> None:
    out = JsonCodec().encode({"type": "ping", "id": 1, "t": "中文"})
    assert isinstance(out, str)
    assert json.loads(out) == {"type": "ping", "id": 1, "t": "中文"}


def test_msgpack_encodes_to_binary_and_is_plain_msgpack() -> None:
    out = MsgpackCodec().encode({"type": "ping", "id": 1, "t": "中文"})
    assert isinstance(out, bytes)
    assert msgpack.unpackb(out, raw=False) == {"type": "ping", "id": 1, "t": "中文"}


def test_integers_stay_integers() -> None:
    frame = {"ts": 1764150000123, "seq": 42, "big": 2**63 - 1}
    for codec in CODECS.values():
        decoded = codec.decode(codec.encode(frame))
        assert decoded == frame
        assert all(type(v) is int for v in decoded.values())


def test_json_large_int_falls_back_to_stdlib() -> None:
    frame = {"n": 2**70}
    assert JsonCodec().decode(JsonCodec().encode(frame)) == frame


def test_json_decode_accepts_bytes_and_bytearray() -> None:
    c = JsonCodec()
    assert c.decode(b'{"type":"pong","id":3}') == {"type": "pong", "id": 3}
    assert c.decode(bytearray(b'{"a":1}')) == {"a": 1}
    assert c.decode(memoryview(b'{"a":1}')) == {"a": 1}


@pytest.mark.parametrize("raw", ["", "{", "not json", "[1, 2]", "3", "null", '"str"'])
def test_json_rejects_non_objects_and_garbage(raw: str) -> None:
    with pytest.raises(CodecError):
        JsonCodec().decode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        msgpack.packb([1, 2]),
        msgpack.packb(5),
        msgpack.packb({1: "int key"}, strict_types=False),
        msgpack.packb({b"bin": 1}, use_bin_type=True),
        msgpack.packb({"a": 1}) + b"\x00",  # trailing data
    ],
)
def test_msgpack_rejects_non_maps_and_garbage(raw: bytes) -> None:
    with pytest.raises(CodecError):
        MsgpackCodec().decode(raw)


def test_msgpack_rejects_text_frames() -> None:
    with pytest.raises(CodecError):
        MsgpackCodec().decode('{"type":"pong"}')


def test_unencodable_frames_raise_codec_error() -> None:
    with pytest.raises(CodecError):
        JsonCodec().encode({"x": object()})
    with pytest.raises(CodecError):
        MsgpackCodec().encode({"x": object()})


def test_codec_error_is_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_get_codec_by_name_and_subprotocol() -> None:
    assert isinstance(get_codec("json"), JsonCodec)
    assert isinstance(get_codec("msgpack"), MsgpackCodec)
    assert isinstance(get_codec("imserver.v1.json"), JsonCodec)
    assert isinstance(get_codec("imserver.v1.msgpack"), MsgpackCodec)
    with pytest.raises(ValueError):
        get_codec("xml")


def test_no_subprotocol_means_json() -> None:
    assert isinstance(codec_for_subprotocol(None), JsonCodec)
    assert isinstance(codec_for_subprotocol(MSGPACK_SUBPROTOCOL), MsgpackCodec)
