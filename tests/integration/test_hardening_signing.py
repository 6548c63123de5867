"""Signed app requests against a real server (issue #12 items 2 and 9).

A replay must stay refused until the request's own ``timestamp + window``
(not a window counted from receipt), timestamps too far ahead are refused,
and malformed timestamps, nonces and signatures get a stable 401 code, not a
500. The server's signing clock and its nonce store share one settable clock,
so "11.5 s later" takes no time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from imserver.app import build_world, start_world
from imserver.http.apps_api import SIGNING_CLOCK
from imserver.nonces import MemoryNonceStore
from imserver_sdk import sign_request
from imserver_sdk.signing import compute_signature
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card, register_app
from tests.support import Harness, make_test_config, stop_harness

WINDOW_S = 10.0
PUSH = "/api/v1/apps/cards"
NONCE = "AbCdEfGhIjKlMnOp_-12"


class Clock:
    """A clock the test sets by hand: whole seconds, so boundaries are exact."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def signed(tmp_path: Path, stub: BusinessStub) -> AsyncIterator[tuple[Harness, Clock]]:
    clock = Clock()
    config = make_test_config(
        tmp_path / "data",
        {
            "auth": {"admin_api_key": ADMIN_KEY},
            "cards": {**CARD_SETTINGS, "signature_window_s": WINDOW_S},
        },
    )
    world = build_world(config, nonce_store=MemoryNonceStore(clock=clock))
    world.http_app[SIGNING_CLOCK] = clock
    await start_world(world)
    server = Harness(world)
    try:
        await register_app(world.http_url, stub)
        await server.users("li")
        yield server, clock
    finally:
        await stop_harness(server)


def push_body(track: str = "sig") -> bytes:
    return orjson.dumps({"card": approval_card(track, ["li"]), "to": {"users": ["li"]}})


async def post(server: Harness, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{server.world.http_url}{PUSH}", data=body, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


async def cards_of_li(server: Harness) -> int:
    return (await server.world.store.todo_cards("li", 10))[1]


async def test_replay_after_the_receipt_window_but_inside_ts_plus_window_is_refused(
    signed: tuple[Harness, Clock], stub: BusinessStub
) -> None:
    server, clock = signed
    start = clock.now
    body = push_body()
    # Signed 9 s ahead of the server (inside the allowed skew): valid until start+19.
    headers = sign_request(stub.app_id, stub.secret, body, now=start + 9)
    status, first = await post(server, body, headers)
    assert status == 201, first
    clock.now = start + 11.5  # past receipt + window, before ts + window
    status, err = await post(server, body, headers)
    assert (status, err["error"]["code"]) == (401, "nonce_replayed")
    assert err["error"]["field"] == "X-Imserver-Nonce"
    clock.now = start + 19.5  # past ts + window: the timestamp alone refuses it
    status, err = await post(server, body, headers)
    assert (status, err["error"]["code"]) == (401, "signature_expired")
    assert await cards_of_li(server) == 1


async def test_timestamps_beyond_the_skew_ahead_are_refused(
    signed: tuple[Harness, Clock], stub: BusinessStub
) -> None:
    server, clock = signed
    body = push_body("ahead")
    too_far = sign_request(stub.app_id, stub.secret, body, now=clock.now + WINDOW_S + 1)
    status, err = await post(server, body, too_far)
    assert (status, err["error"]["code"]) == (401, "signature_expired")
    assert err["error"]["field"] == "X-Imserver-Timestamp"
    assert "ahead" in err["error"]["message"]
    assert await cards_of_li(server) == 0
    at_the_edge = sign_request(stub.app_id, stub.secret, body, now=clock.now + WINDOW_S)
    status, ok = await post(server, body, at_the_edge)
    assert status == 201, ok


@pytest.mark.parametrize(
    ("timestamp", "nonce", "signature", "field"),
    [
        ("²", NONCE, None, "X-Imserver-Timestamp"),  # isdigit() true, int() fails: was a 500
        ("٣", NONCE, None, "X-Imserver-Timestamp"),  # Arabic-Indic 3: int() == 3
        ("1" * 5000, NONCE, None, "X-Imserver-Timestamp"),  # beyond int()'s digit limit
        ("1" * 16, NONCE, None, "X-Imserver-Timestamp"),  # longer than 15 digits
        ("1.7e9", NONCE, None, "X-Imserver-Timestamp"),
        ("-5", NONCE, None, "X-Imserver-Timestamp"),
        ("now", NONCE, "auto", "X-Imserver-Nonce"),  # a nonce of other scripts' letters
        ("now", "short", None, "X-Imserver-Nonce"),
        ("now", "x" * 65, None, "X-Imserver-Nonce"),
        ("now", NONCE, "é" * 64, "X-Imserver-Signature"),  # non-ASCII: compare_digest raised
        ("now", NONCE, "0" * 63, "X-Imserver-Signature"),
    ],
)
async def test_malformed_signed_headers_get_a_stable_401(
    signed: tuple[Harness, Clock],
    stub: BusinessStub,
    timestamp: str,
    nonce: str,
    signature: str | None,
    field: str,
) -> None:
    server, clock = signed
    body = push_body("malformed")
    ts = str(int(clock.now)) if timestamp == "now" else timestamp
    if signature == "auto":
        nonce = "ÄÖÜäöüßÄÖÜäöüßÄÖ"  # 16 letters, none in A-Z a-z
        signature = None
    headers = {
        "X-Imserver-App": stub.app_id,
        "X-Imserver-Timestamp": ts,
        "X-Imserver-Nonce": nonce,
        "X-Imserver-Signature": signature or compute_signature(stub.secret, ts, nonce, body),
    }
    status, err = await post(server, body, headers)
    assert status == 401, err
    assert err["error"]["code"] == "bad_signature"
    assert err["error"]["field"] == field
    assert await cards_of_li(server) == 0
