"""Card-action callbacks (docs/cards.md section 6): parsing and the aiohttp handler.

``parse_callback`` is tested purely. ``callback_handler`` is mounted on a real
aiohttp server on 127.0.0.1 and driven over HTTP by a client that plays
imserver: it signs each delivery with the app's secret and a fresh nonce, and
repeats deliveries the way the server's at-least-once outbox does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from imserver_sdk import (
    CallbackAction,
    NonceCache,
    SignatureError,
    callback_handler,
    parse_callback,
    sign_request,
)
from imserver_sdk import callbacks as callbacks_module

SECRET = "oa-callback-secret-0123456789abcdef"
T = TypeVar("T")

PAYLOAD: dict[str, Any] = {
    "type": "card.action",
    "app_id": "oa",
    "action_id": "b1f0",
    "card_id": "c_1",
    "out_track_id": "leave-2026-0042",
    "version": 2,
    "actor": "li",
    "action": "approve",
    "decision": "approve",
    "inputs": {"comment": "同意"},
    "state": "approved",
    "at": 1_764_400_000_123,
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def encode(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


# -- parse_callback -------------------------------------------------------------


def test_parse_valid_callback() -> None:
    body = encode({**PAYLOAD, "future_key": 1})
    a = parse_callback(SECRET, sign_request("oa", SECRET, body), body)
    assert a == CallbackAction(
        type="card.action",
        app_id="oa",
        action_id="b1f0",
        card_id="c_1",
        out_track_id="leave-2026-0042",
        version=2,
        actor="li",
        action="approve",
        decision="approve",
        inputs={"comment": "同意"},
        state="approved",
        at=1_764_400_000_123,
        raw={},
    )
    assert a.raw["future_key"] == 1  # newer server keys are kept
    assert hash(a) == hash(a)  # usable in sets despite the dict fields
    with pytest.raises(AttributeError):
        a.state = "open"  # type: ignore[misc]


def test_parse_lenient_optional_fields() -> None:
    doc = {k: v for k, v in PAYLOAD.items() if k != "inputs"}
    doc["decision"] = None
    body = encode(doc)
    a = parse_callback(SECRET, sign_request("oa", SECRET, body), body)
    assert a.inputs == {} and a.decision is None


def test_parse_verifies_before_parsing() -> None:
    body = b"not json at all"
    with pytest.raises(SignatureError) as ei:
        parse_callback("wrong-secret", sign_request("oa", SECRET, body), body)
    assert ei.value.code == "bad_signature"
    with pytest.raises(SignatureError) as ei:
        parse_callback(SECRET, {}, body)
    assert ei.value.code == "missing_header"
    old = sign_request("oa", SECRET, body, now=1_000_000)
    with pytest.raises(SignatureError) as ei:
        parse_callback(SECRET, old, body)
    assert ei.value.code == "signature_expired"


def test_parse_replayed_nonce() -> None:
    body = encode(PAYLOAD)
    h = sign_request("oa", SECRET, body)
    cache = NonceCache()
    parse_callback(SECRET, h, body, seen_nonces=cache)
    with pytest.raises(SignatureError) as ei:
        parse_callback(SECRET, h, body, seen_nonces=cache)
    assert ei.value.code == "nonce_replayed"


@pytest.mark.parametrize(
    "doc",
    [
        [PAYLOAD],
        {**PAYLOAD, "type": "card.expired"},
        {k: v for k, v in PAYLOAD.items() if k != "action_id"},
        {**PAYLOAD, "action_id": ""},
        {**PAYLOAD, "version": "2"},
        {**PAYLOAD, "version": True},
        {**PAYLOAD, "at": 1.5},
        {**PAYLOAD, "inputs": ["x"]},
        {**PAYLOAD, "decision": 1},
    ],
)
def test_parse_malformed_payload(doc: Any) -> None:
    body = encode(doc)
    with pytest.raises(ValueError):
        parse_callback(SECRET, sign_request("oa", SECRET, body), body)


def test_parse_non_json_body() -> None:
    body = b"\xff{"
    with pytest.raises(ValueError):
        parse_callback(SECRET, sign_request("oa", SECRET, body), body)


# -- callback_handler on a real server ----------------------------------------------


class Harness:
    """Runs ``callback_handler`` on loopback and posts signed deliveries to it."""

    def __init__(self, on_action: callbacks_module.OnAction, window_s: float = 300) -> None:
        self.app = web.Application()
        self.app.router.add_post("/cb", callback_handler(SECRET, on_action, window_s=window_s))
        self.runner = web.AppRunner(self.app)
        self.url = ""
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Harness:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/cb"
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()
        await self.runner.cleanup()

    async def post(
        self, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        assert self.session is not None
        if headers is None:
            headers = sign_request("oa", SECRET, body)  # fresh nonce per delivery
        headers = {**headers, "Content-Type": "application/json"}
        async with self.session.post(self.url, data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def deliver(self, **changes: Any) -> tuple[int, dict[str, Any]]:
        return await self.post(encode({**PAYLOAD, **changes}))


class Recorder:
    """An ``on_action`` that records calls and answers from a script."""

    def __init__(self, *answers: Any) -> None:
        self.calls: list[CallbackAction] = []
        self.answers = list(answers)

    async def __call__(self, action: CallbackAction) -> dict[str, Any] | None:
        self.calls.append(action)
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, BaseException):
            raise answer
        return answer


UPDATE = {"status": {"text": "已同意", "color": "green"}, "state": "closed"}


def test_handler_returns_card_update_and_drops_repeats() -> None:
    rec = Recorder(UPDATE)

    async def main() -> None:
        async with Harness(rec) as h:
            assert await h.deliver() == (200, {"card_update": UPDATE})
            # The server's retry: same action, newly signed.
            assert await h.deliver() == (200, {})
            assert await h.deliver() == (200, {})
            assert await h.deliver(action_id="other") == (200, {})  # on_action -> None
        assert [c.action_id for c in rec.calls] == ["b1f0", "other"]
        assert rec.calls[0].inputs == {"comment": "同意"}

    run(main())


def test_handler_refuses_bad_signatures() -> None:
    rec = Recorder()

    async def main() -> None:
        async with Harness(rec) as h:
            body = encode(PAYLOAD)
            status, doc = await h.post(body, sign_request("oa", "wrong-secret", body))
            assert (status, doc["error"]["code"]) == (401, "bad_signature")
            status, doc = await h.post(body, {})
            assert (status, doc["error"]["code"]) == (401, "missing_header")
            old = sign_request("oa", SECRET, body, now=1_000_000)
            status, doc = await h.post(body, old)
            assert (status, doc["error"]["code"]) == (401, "signature_expired")
            signed = sign_request("oa", SECRET, body)
            tampered = encode({**PAYLOAD, "decision": "reject"})
            status, doc = await h.post(tampered, signed)
            assert (status, doc["error"]["code"]) == (401, "bad_signature")
            assert rec.calls == []
            assert (await h.post(body, signed))[0] == 200
            status, doc = await h.post(body, signed)  # captured and replayed
            assert (status, doc["error"]["code"]) == (401, "nonce_replayed")
        assert len(rec.calls) == 1

    run(main())


def test_handler_rejects_malformed_payload() -> None:
    rec = Recorder()

    async def main() -> None:
        async with Harness(rec) as h:
            status, doc = await h.deliver(version="two")
            assert (status, doc["error"]["code"]) == (400, "invalid_callback")
            status, doc = await h.post(b"[]")
            assert (status, doc["error"]["code"]) == (400, "invalid_callback")
        assert rec.calls == []

    run(main())


def test_handler_failure_is_retried_not_remembered() -> None:
    rec = Recorder(RuntimeError("db down"), ["not", "a", "dict"], {"title": object()}, UPDATE)

    async def main() -> None:
        async with Harness(rec) as h:
            for _ in range(3):  # raises; returns a list; returns unserializable
                status, doc = await h.deliver()
                assert (status, doc["error"]["code"]) == (500, "handler_failed")
            assert await h.deliver() == (200, {"card_update": UPDATE})
            assert await h.deliver() == (200, {})
        assert len(rec.calls) == 4

    run(main())


def test_concurrent_repeat_waits_for_first_delivery() -> None:
    async def main() -> None:
        release, started = asyncio.Event(), asyncio.Event()
        calls: list[str] = []
        outcomes: list[Any] = [RuntimeError("first fails"), UPDATE]

        async def slow(action: CallbackAction) -> dict[str, Any] | None:
            calls.append(action.action_id)
            started.set()
            await release.wait()
            out = outcomes.pop(0)
            if isinstance(out, BaseException):
                raise out
            return out  # type: ignore[no-any-return]

        async with Harness(slow) as h:
            first = asyncio.create_task(h.deliver())
            await started.wait()
            second = asyncio.create_task(h.deliver())  # server retry after a timeout
            await asyncio.sleep(0.05)
            assert len(calls) == 1  # the repeat waits, it does not answer early
            release.set()
            s1, d1 = await first
            assert (s1, d1["error"]["code"]) == (500, "handler_failed")
            # The first failed, so the waiting repeat ran on_action itself.
            assert await second == (200, {"card_update": UPDATE})
            assert await h.deliver() == (200, {})
        assert calls == ["b1f0", "b1f0"]

    run(main())


def test_concurrent_repeat_after_success_gets_empty_answer() -> None:
    async def main() -> None:
        release, started = asyncio.Event(), asyncio.Event()
        calls = 0

        async def slow(_a: CallbackAction) -> dict[str, Any] | None:
            nonlocal calls
            calls += 1
            started.set()
            await release.wait()
            return UPDATE

        async with Harness(slow) as h:
            first = asyncio.create_task(h.deliver())
            await started.wait()
            second = asyncio.create_task(h.deliver())
            await asyncio.sleep(0.05)
            release.set()
            assert await first == (200, {"card_update": UPDATE})
            assert await second == (200, {})
        assert calls == 1

    run(main())


def test_handler_remembers_a_bounded_number_of_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks_module, "REMEMBERED_ACTIONS", 3)
    rec = Recorder()

    async def main() -> None:
        async with Harness(rec) as h:
            for i in range(4):
                assert await h.deliver(action_id=f"a{i}") == (200, {})
            for i in (1, 2, 3):  # still remembered
                assert await h.deliver(action_id=f"a{i}") == (200, {})
            assert len(rec.calls) == 4
            await h.deliver(action_id="a0")  # forgotten, so handled again
        assert [c.action_id for c in rec.calls] == ["a0", "a1", "a2", "a3", "a0"]

    run(main())
