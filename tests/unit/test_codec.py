"""Unit tests for imserver/protocol/codec.py: the per-connection frame codecs."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.errors import BadFrame, FrameTooLarge, ImError
from imserver.protocol.codec import (
    CODECS,
    JSON,
    JSON_SUBPROTOCOL,
    MSGPACK,
    MSGPACK_SUBPROTOCOL,
    SUBPROTOCOLS,
    Codec,
    codec_for,
)

LIMIT = 65536

FRAMES: list[dict[str, Any]] = [
    {"type": "ping", "id": 3},
    {"type": "auth", "id": 1, "token": "eyJhbGciOiJIUzI1NiJ9.e30.x"},
    {
        "type": "send",
        "id": "req-8",
        "conv": "g:Yq3abcdefgh",
        "client_msg_id": "b7c1f0e2",
        "kind": "text",
        "body": {"text": "@bob 请审阅 📎", "mentions": ["bob"], "mention_all": False},
    },
    {"type": "sync", "id": 2, "since": {"dm:alice:bob": 17, "g:Yq3abcdefgh": 40}},
    {"type": "error", "id": None, "code": "bad_frame", "message": "x", "field": None},
    {
        "type": "result",
        "id": 9,
        "data": {"ts": 1764150000123, "f": 1.5, "l": [], "neg": -(2**62), "big": 2**63 - 1},
    },
    {},
]


def _wire(codec: Codec, frame: dict[str, Any]) -> bytes | str:
    """What the WebSocket layer hands the codec: text for JSON, bytes for msgpack."""
    data = codec.encode(frame)
    return data.decode() if codec.text else data


# -- selection ---------------------------------------------------------------
def test_codec_for_none_is_json() -> None:
    assert codec_for(None) is JSON
    assert codec_for(None).name == JSON_SUBPROTOCOL


def test_codec_for_named_subprotocols() -> None:
    assert codec_for(JSON_SUBPROTOCOL) is JSON
    assert codec_for(MSGPACK_SUBPROTOCOL) is MSGPACK
    assert SUBPROTOCOLS == ("imserver.v1.json", "imserver.v1.msgpack")
    assert set(CODECS) == set(SUBPROTOCOLS)


def test_codec_frame_kinds() -> None:
    assert JSON.text is True
    assert MSGPACK.text is False


# -- round trips ---------------------------------------------------------------
@pytest.mark.parametrize("frame", FRAMES)
def test_json_round_trip(frame: dict[str, Any]) -> None:
    encoded = JSON.encode(frame)
    assert isinstance(encoded, bytes)
    assert orjson.loads(encoded) == frame
    assert JSON.decode(encoded, LIMIT) == frame
    assert JSON.decode(encoded.decode(), LIMIT) == frame


@pytest.mark.parametrize("frame", FRAMES)
def test_msgpack_round_trip(frame: dict[str, Any]) -> None:
    encoded = MSGPACK.encode(frame)
    assert isinstance(encoded, bytes)
    assert msgpack.unpackb(encoded, raw=False) == frame
    assert MSGPACK.decode(encoded, LIMIT) == frame


def test_msgpack_decodes_frames_from_a_plain_msgpack_library() -> None:
    frame = {"type": "send", "id": 1, "body": {"text": "hi", "mentions": ["a", "b"]}}
    data = msgpack.packb(frame, use_bin_type=True)
    assert MSGPACK.decode(data, LIMIT) == frame


# -- size limit ----------------------------------------------------------------
@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_frame_over_limit_is_frame_too_large(codec: Codec) -> None:
    frame = {"type": "send", "id": 1, "pad": "x" * 2000}
    data = _wire(codec, frame)
    with pytest.raises(FrameTooLarge) as info:
        codec.decode(data, 1024)
    assert info.value.code == "frame_too_large"


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_frame_exactly_at_limit_is_accepted(codec: Codec) -> None:
    frame = {"type": "ping", "id": 1, "pad": "x" * 100}
    data = _wire(codec, frame)
    size = len(data.encode()) if isinstance(data, str) else len(data)
    assert codec.decode(data, size) == frame
    with pytest.raises(FrameTooLarge):
        codec.decode(data, size - 1)


def test_json_limit_counts_utf8_bytes_not_characters() -> None:
    frame = {"t": "中" * 400}  # 400 chars, 1200 bytes in UTF-8
    text = JSON.encode(frame).decode()
    assert len(text) < 1024 < len(text.encode())
    with pytest.raises(FrameTooLarge):
        JSON.decode(text, 1024)


# -- garbage and wrong shapes --------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b'{"a":}', b"\xff\xfe", "{'single': 'quotes'}", '{"a": NaN}'],
)
def test_json_garbage_is_bad_frame(data: bytes | str) -> None:
    with pytest.raises(BadFrame) as info:
        JSON.decode(data, LIMIT)
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\x92\x01",  # array of 2, one element
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 G items
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 G entries
    ],
)
def test_msgpack_garbage_is_bad_frame(data: bytes) -> None:
    with pytest.raises(BadFrame) as info:
        MSGPACK.decode(data, LIMIT)
    assert info.value.code == "bad_frame"


def test_msgpack_trailing_bytes_are_bad_frame() -> None:
    data = msgpack.packb({"type": "ping", "id": 1}) + b"\x00"
    with pytest.raises(BadFrame):
        MSGPACK.decode(data, LIMIT)


@pytest.mark.parametrize("value", [[1, 2], 5, "a string", 1.5, None, True])
def test_json_non_object_frames_are_bad_frame(value: Any) -> None:
    with pytest.raises(BadFrame) as info:
        JSON.decode(orjson.dumps(value), LIMIT)
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize("value", [[1, 2], 5, "a string", 1.5, None, True])
def test_msgpack_non_map_frames_are_bad_frame(value: Any) -> None:
    with pytest.raises(BadFrame) as info:
        MSGPACK.decode(msgpack.packb(value), LIMIT)
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize(
    "frame",
    [{1: "int key"}, {b"bin": 1}, {"ok": 1, 2.5: "float key"}],
    ids=["int", "bin", "float"],
)
def test_msgpack_non_string_keys_are_bad_frame(frame: dict[Any, Any]) -> None:
    data = msgpack.packb(frame, use_bin_type=True, strict_types=False)
    with pytest.raises(BadFrame) as info:
        MSGPACK.decode(data, LIMIT)
    assert info.value.code == "bad_frame"


def test_msgpack_non_string_keys_in_nested_map_are_bad_frame() -> None:
    data = msgpack.packb({"type": "sync", "since": {1: 2}}, use_bin_type=True)
    with pytest.raises(BadFrame):
        MSGPACK.decode(data, LIMIT)


def test_text_frame_on_msgpack_codec_is_bad_frame() -> None:
    with pytest.raises(BadFrame) as info:
        MSGPACK.decode('{"type": "ping", "id": 1}', LIMIT)
    assert info.value.code == "bad_frame"


def test_deeply_nested_frames_are_bad_frame() -> None:
    with pytest.raises(BadFrame):
        JSON.decode('{"a":' + "[" * 5000 + "]" * 5000 + "}", 10**6)
    with pytest.raises(BadFrame):
        MSGPACK.decode(b"\x81\xa1a" + b"\x91" * 5000 + b"\x90", 10**6)


# -- property: decoders only ever raise ImError ----------------------------------
@settings(max_examples=400, deadline=None)
@given(data=st.one_of(st.binary(max_size=256), st.text(max_size=256)))
def test_json_decoder_raises_only_im_errors(data: bytes | str) -> None:
    try:
        out = JSON.decode(data, 128)
    except ImError as e:
        assert e.code in ("bad_frame", "frame_too_large")
    else:
        assert isinstance(out, dict)
        assert all(isinstance(k, str) for k in out)


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(st.binary(max_size=256), st.text(max_size=256)))
def test_msgpack_decoder_raises_only_im_errors(data: bytes | str) -> None:
    try:
        out = MSGPACK.decode(data, 128)
    except ImError as e:
        assert e.code in ("bad_frame", "frame_too_large")
    else:
        assert isinstance(out, dict)
        assert all(isinstance(k, str) for k in out)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(frame=st.dictionaries(st.text(max_size=8), _json_values, max_size=6))
def test_round_trip_property(frame: dict[str, Any]) -> None:
    assert JSON.decode(JSON.encode(frame), 10**6) == frame
    assert MSGPACK.decode(MSGPACK.encode(frame), 10**6) == frame
