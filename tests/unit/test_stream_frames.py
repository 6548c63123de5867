"""Stream mode's pure parts: the frames (cards.stream_frames) and the registry's choice."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cards.stream import CLOSED, StreamConnection, StreamRegistry
from cards.stream_frames import (
    MAX_NACK_ERROR,
    Ack,
    Nack,
    UnknownDelivery,
    callback_frame,
    error_frame,
    frame_id_of,
    parse_client_frame,
)
from imserver.errors import ImError
from imserver.metrics import Metrics
from imserver.store.records import AppRecord, OutboxItem


def test_ack_and_nack_parse() -> None:
    assert parse_client_frame('{"type":"ack","id":"a1"}') == Ack("a1", None)
    update = {"status": {"text": "已同意"}}
    assert parse_client_frame(
        orjson.dumps({"type": "ack", "id": "a1", "card_update": update}).decode()
    ) == Ack("a1", update)
    assert parse_client_frame('{"type":"nack","id":"a1"}') == Nack("a1", "")
    long = orjson.dumps({"type": "nack", "id": "a", "error": "x" * 1000}).decode()
    assert parse_client_frame(long) == Nack("a", "x" * MAX_NACK_ERROR)


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ("", "bad_frame", None),
        ("nope", "bad_frame", None),
        ("[]", "bad_frame", None),
        ('"ack"', "bad_frame", None),
        ("{}", "unknown_type", None),
        ('{"type":"callback","id":"a"}', "unknown_type", None),
        ('{"type":"ack"}', "invalid_field", "id"),
        ('{"type":"ack","id":""}', "invalid_field", "id"),
        ('{"type":"ack","id":1}', "invalid_field", "id"),
        ('{"type":"ack","id":"' + "a" * 65 + '"}', "invalid_field", "id"),
        ('{"type":"ack","id":"a","card_update":[]}', "invalid_field", "card_update"),
        ('{"type":"nack","id":"a","error":{}}', "invalid_field", "error"),
    ],
)
def test_bad_frames_have_stable_codes(text: str, code: str, field: str | None) -> None:
    with pytest.raises(ImError) as e:
        parse_client_frame(text)
    assert (e.value.code, e.value.field) == (code, field)
    assert e.value.message


@given(st.text(max_size=200))
def test_any_text_is_a_frame_or_a_stable_error(text: str) -> None:
    try:
        frame = parse_client_frame(text)
    except ImError as e:
        assert e.code in ("bad_frame", "unknown_type", "invalid_field")
    else:
        assert isinstance(frame, Ack | Nack)


def test_the_callback_frame_carries_the_signed_bytes_exactly() -> None:
    body = orjson.dumps({"type": "card.action", "actor": "李四", "note": 'a"b\\c'})
    frame = json.loads(callback_frame("d1", "act1", {"X-Imserver-Nonce": "n"}, body))
    assert frame["body"].encode() == body  # what the signature covers, byte for byte
    assert (frame["type"], frame["id"], frame["action_id"]) == ("callback", "d1", "act1")


def test_error_frames_echo_a_usable_id_only() -> None:
    err = UnknownDelivery("no such delivery", field="id")
    assert json.loads(error_frame(err, "x")) == {
        "type": "error",
        "code": "unknown_delivery",
        "message": "no such delivery",
        "id": "x",
        "field": "id",
    }
    assert frame_id_of('{"id":"abc"}') == "abc"
    assert frame_id_of('{"id":5}') is None
    assert frame_id_of("not json") is None
    assert frame_id_of('{"id":"' + "a" * 65 + '"}') is None


APP = AppRecord("oa", "", "s" * 32, "", ("*",))
ITEM = OutboxItem(1, "oa", "c1", "act1", {"type": "card.action"}, "pending", 0, 0, "")


async def test_round_robin_over_an_apps_live_streams() -> None:
    registry = StreamRegistry(Metrics())
    sent: dict[str, list[str]] = {"a": [], "b": []}

    def sender(name: str) -> Any:
        async def send(text: str) -> None:
            sent[name].append(text)

        return send

    a, b = StreamConnection("oa", sender("a"), "a"), StreamConnection("oa", sender("b"), "b")
    registry.add(a)
    registry.add(b)
    assert [registry.pick("oa") for _ in range(4)] == [a, b, a, b]
    assert registry.pick("other") is None
    registry.remove(a)
    assert [registry.pick("oa") for _ in range(2)] == [b, b]
    assert registry.count("oa") == registry.count() == 1


async def test_a_closed_connection_fails_what_it_waits_for() -> None:
    async def send(text: str) -> None:
        pass

    conn = StreamConnection("oa", send, "peer")
    waiting = asyncio.create_task(conn.deliver(APP, ITEM, 0.0, ack_timeout_s=5))
    await asyncio.sleep(0.01)
    assert conn.unacked == 1
    conn.close()
    assert await waiting == ("closed", (CLOSED, None))
    with pytest.raises(UnknownDelivery):
        conn.answer(Ack("whatever", None))
