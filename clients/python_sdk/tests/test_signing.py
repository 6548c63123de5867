"""Signing (docs/cards.md section 2) and BusinessClient against a loopback server.

The signing tests are pure. The BusinessClient tests run a small real aiohttp
server on 127.0.0.1 that plays imserver's app API: it verifies every request
with ``verify_signature`` and a ``NonceCache`` exactly as the server must, and
records what arrived, so serialization, signing and retry behaviour are
checked on real HTTP bytes. Tests drive their own loop with ``asyncio.run``
so they work with or without pytest-asyncio, like the rest of the SDK tests.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from imserver_sdk import (
    BusinessClient,
    BusinessError,
    NonceCache,
    ProtocolError,
    SignatureError,
    sign_request,
    verify_signature,
)
from imserver_sdk.signing import compute_signature

SECRET = "a-long-random-string-at-least-32-chars"
T0 = 1_764_400_000.0
NONCE = "AbCdEfGhIjKlMnOp_-12"


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- signing -------------------------------------------------------------------


def test_signature_matches_independent_vector() -> None:
    # Computed with: printf '1764400000\n<nonce>\n{"a":"请"}' | openssl dgst -sha256 -hmac <secret>
    body = '{"a":"请"}'.encode()
    expected = "6c3c78c8b2f9d48c1b6cb2d9fc5fb6857bd38b9ef5284d62b523da9d9555e59f"
    assert compute_signature(SECRET, "1764400000", NONCE, body) == expected
    headers = sign_request("oa", SECRET, body, now=T0 + 0.9, nonce=NONCE)
    assert headers == {
        "X-Imserver-App": "oa",
        "X-Imserver-Timestamp": "1764400000",  # whole seconds, truncated
        "X-Imserver-Nonce": NONCE,
        "X-Imserver-Signature": expected,
    }


def test_sign_request_draws_fresh_valid_nonces() -> None:
    seen = set()
    for _ in range(50):
        h = sign_request("oa", SECRET, b"")
        assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", h["X-Imserver-Nonce"])
        assert re.fullmatch(r"[0-9a-f]{64}", h["X-Imserver-Signature"])
        assert re.fullmatch(r"[0-9]+", h["X-Imserver-Timestamp"])
        seen.add(h["X-Imserver-Nonce"])
    assert len(seen) == 50


@pytest.mark.parametrize("nonce", ["short", "x" * 65, "has space 123456789", "ü" * 20, ""])
def test_sign_request_rejects_bad_nonce(nonce: str) -> None:
    with pytest.raises(ValueError):
        sign_request("oa", SECRET, b"", nonce=nonce)


def _signed(body: bytes = b'{"x":1}', **kw: Any) -> dict[str, str]:
    return sign_request("oa", SECRET, body, now=kw.pop("now", T0), nonce=kw.pop("nonce", NONCE))


def _code(headers: dict[str, str], body: bytes = b'{"x":1}', **kw: Any) -> str:
    with pytest.raises(SignatureError) as ei:
        verify_signature(SECRET, headers, body, **{"now": T0, **kw})
    return ei.value.code


def test_verify_accepts_valid_and_case_insensitive_headers() -> None:
    h = _signed()
    verify_signature(SECRET, h, b'{"x":1}', now=T0)
    verify_signature(SECRET, {k.lower(): v for k, v in h.items()}, b'{"x":1}', now=T0)
    # The app header is not covered by the signature and is not required.
    del h["X-Imserver-App"]
    verify_signature(SECRET, h, b'{"x":1}', now=T0)


def test_verify_bad_signature_cases() -> None:
    h = _signed()
    assert _code(h, b'{"x":2}') == "bad_signature"  # tampered body
    assert _code(h, b'{"x": 1}') == "bad_signature"  # re-serialized body
    with pytest.raises(SignatureError) as ei:
        verify_signature("another-secret", h, b'{"x":1}', now=T0)
    assert ei.value.code == "bad_signature"
    assert _code({**h, "X-Imserver-Signature": h["X-Imserver-Signature"].upper()}) == (
        "bad_signature"
    )
    # Non-ASCII must be refused cleanly, not crash hmac.compare_digest.
    assert _code({**h, "X-Imserver-Signature": "é" * 64}) == "bad_signature"
    assert _code({**h, "X-Imserver-Timestamp": "1764400000.0"}) == "bad_signature"
    assert _code({**h, "X-Imserver-Timestamp": "soon"}) == "bad_signature"
    assert _code({**h, "X-Imserver-Nonce": "short"}) == "bad_signature"
    # A different (valid-looking) nonce than the one signed.
    assert _code({**h, "X-Imserver-Nonce": "Z" * 32}) == "bad_signature"


@pytest.mark.parametrize(
    "name", ["X-Imserver-Timestamp", "X-Imserver-Nonce", "X-Imserver-Signature"]
)
def test_verify_missing_header(name: str) -> None:
    h = _signed()
    assert _code({**h, name: ""}) == "missing_header"
    del h[name]
    assert _code(h) == "missing_header"


def test_verify_window() -> None:
    h = _signed()
    verify_signature(SECRET, h, b'{"x":1}', now=T0 + 300)  # exactly at the edge: ok
    verify_signature(SECRET, h, b'{"x":1}', now=T0 - 300)
    assert _code(h, now=T0 + 301) == "signature_expired"
    assert _code(h, now=T0 - 301) == "signature_expired"  # from the future
    verify_signature(SECRET, h, b'{"x":1}', now=T0 + 500, window_s=600)
    # Real clock: a fresh signature verifies without passing `now`.
    verify_signature(SECRET, sign_request("oa", SECRET, b""), b"")


def test_verify_nonce_replay() -> None:
    cache = NonceCache(300)
    h = _signed()
    verify_signature(SECRET, h, b'{"x":1}', now=T0, seen_nonces=cache)
    assert _code(h, seen_nonces=cache) == "nonce_replayed"
    # Without a cache only the window protects, so a replay passes.
    verify_signature(SECRET, h, b'{"x":1}', now=T0)
    # Same nonce, different body and timestamp: still a replay.
    h2 = _signed(b"{}", now=T0 + 10)
    assert _code(h2, b"{}", now=T0 + 10, seen_nonces=cache) == "nonce_replayed"


def test_forged_request_does_not_poison_nonce_cache() -> None:
    cache = NonceCache(300)
    forged = {**_signed(), "X-Imserver-Signature": "0" * 64}
    assert _code(forged, seen_nonces=cache) == "bad_signature"
    expired = _signed(now=T0 - 1000)
    assert _code(expired, seen_nonces=cache) == "signature_expired"
    assert NONCE not in cache
    verify_signature(SECRET, _signed(), b'{"x":1}', now=T0, seen_nonces=cache)


def test_nonce_cache_expires_and_stays_bounded() -> None:
    cache = NonceCache(10)
    assert cache.check_and_add("a" * 16, T0, now=T0)
    assert not cache.check_and_add("a" * 16, T0, now=T0 + 5)
    assert cache.check_and_add("b" * 16, T0 + 8, now=T0 + 5)  # skewed clock
    # "a" expires at T0+10, "b" at T0+18.
    assert cache.check_and_add("c" * 16, T0 + 11, now=T0 + 11)
    assert "a" * 16 not in cache and "b" * 16 in cache
    assert cache.check_and_add("a" * 16, T0 + 11, now=T0 + 11)  # window passed: new again
    # A steady stream keeps only about one window's worth of entries.
    for i in range(5000):
        cache.check_and_add(f"n{i:015d}", T0 + 100 + i, now=T0 + 100 + i)
    assert len(cache) <= 12
    with pytest.raises(ValueError):
        NonceCache(0)


def test_signature_error_pickles() -> None:
    e = pickle.loads(pickle.dumps(SignatureError("nonce_replayed", "again")))
    assert (e.code, e.message) == ("nonce_replayed", "again")


# -- BusinessClient against a loopback server ------------------------------------


@dataclass
class Seen:
    method: str
    raw_path: str
    match: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = Callable[[Seen, int], Awaitable[web.StreamResponse]]


@dataclass
class FakeApi:
    """A real HTTP server checking signatures the way imserver must."""

    reply: Reply
    seen: list[Seen] = field(default_factory=list)
    nonces: NonceCache = field(default_factory=lambda: NonceCache(300))
    url: str = ""
    drop: int = 0  # close this many connections without answering

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.drop:
            self.drop -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never reaches the client
        try:
            verify_signature(SECRET, request.headers, body, seen_nonces=self.nonces)
        except SignatureError as e:
            return web.json_response({"error": {"code": e.code, "message": e.message}}, status=401)
        s = Seen(
            request.method,
            request.raw_path,
            request.match_info.get("tail", ""),
            dict(request.headers),
            body,
        )
        self.seen.append(s)
        return await self.reply(s, len(self.seen))


async def serve(reply: Reply, fn: Callable[[FakeApi], Coroutine[Any, Any, None]]) -> FakeApi:
    api = FakeApi(reply)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        await fn(api)
    finally:
        await runner.cleanup()
    return api


def ok(payload: dict[str, Any], status: int = 200) -> Reply:
    async def reply(_s: Seen, _n: int) -> web.StreamResponse:
        return web.json_response(payload, status=status)

    return reply


CARD: dict[str, Any] = {
    "out_track_id": "leave-2026-0042",
    "title": "请假审批 张三 3 天",
    "fields": [{"label": "申请人", "value": "张三"}],
    "policy": {"type": "any", "actors": ["li", "wang"]},
}
PUSHED = {
    "card_id": "c_1",
    "out_track_id": "leave-2026-0042",
    "version": 1,
    "state": "open",
    "holders": 3,
    "duplicate": False,
}


def test_push_card_signs_exact_bytes_sent() -> None:
    async def body(api: FakeApi) -> None:
        async with BusinessClient(api.url + "/", "oa", SECRET) as biz:
            res = await biz.push_card(CARD, users=("li", "wang"), groups=iter(["g:Yq3"]))
        assert res == PUSHED
        (s,) = api.seen
        assert (s.method, s.raw_path) == ("POST", "/api/v1/apps/cards")
        assert s.headers["Content-Type"] == "application/json"
        assert s.headers["X-Imserver-App"] == "oa"
        assert s.json() == {"card": CARD, "to": {"users": ["li", "wang"], "groups": ["g:Yq3"]}}
        assert "请假审批".encode() in s.body  # UTF-8, not \\u escapes

    run(serve(ok(PUSHED, 201), body))


def test_update_get_and_notice() -> None:
    async def reply(s: Seen, _n: int) -> web.StreamResponse:
        return web.json_response({"echo": s.method, "id": s.match}, status=200)

    async def body(api: FakeApi) -> None:
        async with BusinessClient(api.url, "oa", SECRET) as biz:
            res = await biz.update_card(
                "leave-2026-0042", if_version=3, state="closed", status={"text": "已办结"}
            )
            assert res == {"echo": "PATCH", "id": "api/v1/apps/cards/leave-2026-0042"}
            await biz.update_card("a:b.c", title="t")
            await biz.update_card("..", title="t")
            got = await biz.get_card("leave-2026-0042")
            assert got["echo"] == "GET"
            await biz.send_notice("停电通知", "**明天**", users=["li"], urgent=True)
            assert await biz.request("POST", "/api/v1/other") == {
                "echo": "POST",
                "id": "api/v1/other",
            }
        patch, colon, dots, get, notice, other = api.seen
        assert patch.json() == {"state": "closed", "status": {"text": "已办结"}, "if_version": 3}
        assert colon.raw_path == "/api/v1/apps/cards/a%3Ab.c"
        assert colon.match == "api/v1/apps/cards/a:b.c"
        # ".." must stay a literal segment, not climb to /api/v1/apps/.
        assert dots.raw_path == "/api/v1/apps/cards/%2E%2E"
        assert colon.json() == dots.json() == {"title": "t"}
        assert (get.method, get.body) == ("GET", b"")
        assert "Content-Type" not in get.headers
        assert notice.raw_path == "/api/v1/apps/notices"
        assert notice.json() == {
            "to": {"users": ["li"], "groups": []},
            "title": "停电通知",
            "text": "**明天**",
            "urgent": True,
        }
        assert other.body == b""

    run(serve(reply, body))


def test_error_bodies_become_business_errors() -> None:
    replies: list[web.StreamResponse] = [
        web.json_response(
            {"error": {"code": "invalid_field", "message": "bad", "field": "card.title"}},
            status=400,
        ),
        web.json_response(
            {"error": {"code": "card_decided", "message": "x", "decided_by": "li"}}, status=409
        ),
        web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html"),
        web.Response(status=200, text="not json"),
        web.json_response([1, 2], status=200),
        web.Response(status=204),
    ]

    async def reply(_s: Seen, n: int) -> web.StreamResponse:
        return replies[n - 1]

    async def body(api: FakeApi) -> None:
        async with BusinessClient(api.url, "oa", SECRET) as biz:
            with pytest.raises(BusinessError) as ei:
                await biz.update_card("x", title="")
            e = ei.value
            assert (e.status, e.code, e.message, e.field) == (
                400,
                "invalid_field",
                "bad",
                "card.title",
            )
            with pytest.raises(BusinessError) as ei:
                await biz.update_card("x", title="t")
            assert ei.value.code == "card_decided" and ei.value.body["decided_by"] == "li"
            assert ei.value.field is None
            with pytest.raises(BusinessError) as ei:
                await biz.get_card("x")  # 502 from a "proxy": not retried, code unknown
            assert (ei.value.status, ei.value.code) == (502, "unknown")
            assert "bad gateway" in ei.value.message
            with pytest.raises(ProtocolError):
                await biz.get_card("x")
            with pytest.raises(ProtocolError):
                await biz.get_card("x")
            assert await biz.get_card("x") == {}
        assert len(api.seen) == 6
        e2 = pickle.loads(pickle.dumps(e))
        assert (e2.status, e2.code, e2.field) == (400, "invalid_field", "card.title")

    run(serve(reply, body))


def test_wrong_secret_is_refused_and_not_retried() -> None:
    async def body(api: FakeApi) -> None:
        async with BusinessClient(api.url, "oa", "not-the-secret", backoff_s=0.001) as biz:
            with pytest.raises(BusinessError) as ei:
                await biz.push_card(CARD, users=["li"])
        assert (ei.value.status, ei.value.code) == (401, "bad_signature")
        assert api.seen == []

    run(serve(ok(PUSHED), body))


def test_push_card_retries_5xx_with_fresh_signatures() -> None:
    async def reply(_s: Seen, n: int) -> web.StreamResponse:
        if n < 3:
            return web.json_response({"error": {"code": "internal", "message": ""}}, status=503)
        return web.json_response({**PUSHED, "duplicate": True}, status=201)

    async def body(api: FakeApi) -> None:
        async with BusinessClient(api.url, "oa", SECRET, backoff_s=0.001) as biz:
            res = await biz.push_card(CARD, users=["li"])
        assert res["duplicate"] is True
        assert len(api.seen) == 3
        # Same bytes every time; a new nonce each time (the server's nonce
        # cache accepted all three, or they would not have been recorded).
        assert len({s.body for s in api.seen}) == 1
        assert len({s.headers["X-Imserver-Nonce"] for s in api.seen}) == 3

    run(serve(reply, body))


def test_push_card_gives_up_after_retries_and_others_do_not_retry() -> None:
    fail = ok({"error": {"code": "internal", "message": "boom"}}, 500)

    async def body(api: FakeApi) -> None:
        async with BusinessClient(api.url, "oa", SECRET, backoff_s=0.001) as biz:
            with pytest.raises(BusinessError) as ei:
                await biz.push_card(CARD, users=["li"])
            assert (ei.value.status, ei.value.code) == (500, "internal")
            assert len(api.seen) == 4  # 1 + 3 retries
            with pytest.raises(BusinessError):
                await biz.update_card("x", title="t")
            with pytest.raises(BusinessError):
                await biz.send_notice("t", "x", users=["li"])
            assert len(api.seen) == 6

    run(serve(fail, body))


def test_push_card_retries_dropped_connection() -> None:
    async def body(api: FakeApi) -> None:
        api.drop = 2
        async with BusinessClient(api.url, "oa", SECRET, backoff_s=0.001) as biz:
            assert await biz.push_card(CARD, users=["li"]) == PUSHED
        assert api.drop == 0 and len(api.seen) == 1

    run(serve(ok(PUSHED, 201), body))


def test_push_card_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed

    async def main() -> None:
        async with BusinessClient(f"http://127.0.0.1:{port}", "oa", SECRET, backoff_s=0.001) as b:
            with pytest.raises(aiohttp.ClientConnectionError):
                await b.push_card(CARD, users=["li"])

    run(main())


def test_argument_checks() -> None:
    async def main() -> None:
        async with BusinessClient("http://127.0.0.1:1", "oa", SECRET) as biz:
            with pytest.raises(TypeError):
                await biz.push_card(CARD, users="alice")
            with pytest.raises(TypeError):
                await biz.send_notice("t", "x", groups=[1])  # type: ignore[list-item]
            with pytest.raises(ValueError):
                await biz.get_card("")
            with pytest.raises(ValueError):
                await biz.request("GET", "api/v1/x")
            assert SECRET not in repr(biz)
        await biz.close()  # idempotent

    run(main())
    with pytest.raises(ValueError):
        BusinessClient("127.0.0.1:8700", "oa", SECRET)
