"""The card requests on a live socket, now that the cards plug-in registers
them with the core (imserver/gateway/extensions.py) instead of the core
knowing them: the same answers and error codes as before the move.
"""

from __future__ import annotations

import pytest

from tests.support import Harness

CODECS = ["json", "msgpack"]


@pytest.mark.parametrize("codec", CODECS)
async def test_card_request_before_auth_is_not_authenticated(server: Harness, codec: str) -> None:
    """The first-frame check parses with the full table: a card type is known, not unknown."""
    raw = await server.raw(None, codec=codec)
    await raw.send(
        {"type": "card.act", "id": 3, "card_id": "c_abcdefgh12", "action": "a", "action_id": "b"}
    )
    answer = await raw.recv()
    assert (answer["type"], answer["code"], answer["id"]) == ("error", "not_authenticated", 3)
    assert await raw.expect_close() == 4003


@pytest.mark.parametrize("codec", CODECS)
async def test_card_requests_answer_as_before(server: Harness, codec: str) -> None:
    raw = await server.raw("li", codec=codec)
    todo = await raw.request("todo")
    assert todo["type"] == "result" and todo["data"] == {"total": 0, "overdue": 0, "cards": []}
    missing = await raw.request("card.get", card_id="c_abcdefgh12")
    assert (missing["type"], missing["code"]) == ("error", "no_such_card"), missing
    synced = await raw.request("sync", cards_since=5)
    assert synced["type"] == "result", synced
    cards_part = {k: v for k, v in synced["data"].items() if k.startswith("cards")}
    assert cards_part == {"cards": [], "cards_cursor": 5, "cards_more": False}
    assert "conversations" in synced["data"]  # the core's part is still there


@pytest.mark.parametrize(
    ("type_", "fields", "field"),
    [
        ("card.get", {"card_id": "g:abcdefgh"}, "card_id"),
        ("card.act", {"card_id": "c_abcdefgh12", "action_id": "x"}, "action"),
        ("todo", {"limit": 0}, "limit"),
        ("sync", {"cards_since": "1"}, "cards_since"),
    ],
)
async def test_bad_card_fields_name_the_field_and_keep_the_socket(
    server: Harness, type_: str, fields: dict[str, object], field: str
) -> None:
    raw = await server.raw("li")
    answer = await raw.request(type_, **fields)
    assert (answer["type"], answer["code"], answer["field"]) == ("error", "invalid_field", field)
    assert (await raw.request("ping"))["type"] == "pong"


async def test_unknown_type_is_still_unknown(server: Harness) -> None:
    raw = await server.raw("li")
    answer = await raw.request("card.nope")
    assert (answer["type"], answer["code"]) == ("error", "unknown_type")
