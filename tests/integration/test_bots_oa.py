"""The OA bot end to end: OA event → card over WebSocket → decision → OA, exactly once.

Everything is real and on loopback: the imserver server (the ``start_server``
harness), the bot runtime (in-process here; as a ``kill -9``-able child process
in test_bots_restart.py), the simulated OA system of ``bots/demo`` and users
on the SDK's WebSocket client.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bots.demo.oa_system import OASystem, leave_request
from bots.runtime.config import BotConfig, RuntimeConfig
from bots.runtime.model import track_id
from bots.runtime.runner import BotRuntime
from imserver_sdk import BusinessClient, BusinessError, Client, ServerError, sign_request
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS
from tests.support import Harness

APPROVERS = ["li", "wang", "zhao"]


@dataclass
class OAWorld:
    server: Harness
    runtime: BotRuntime
    oa: OASystem
    app: BusinessClient  # the bot's app, to read cards back as the server holds them

    @property
    def events_url(self) -> str:
        return self.runtime.url("oa", "events")


async def register_app(http_url: str, app_id: str, secret: str, callback_url: str) -> None:
    """Register the bot's app with the server (admin API), as an operator would."""
    body = {"app_id": app_id, "secret": secret, "callback_url": callback_url, "scope": ["*"]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{http_url}/admin/v1/apps", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json=body
        ) as r,
    ):
        assert r.status == 201, await r.text()


def runtime_config(
    store: Path, server_url: str, bot: BotConfig, port: int = 0, inline_s: float = 1.0
) -> RuntimeConfig:
    return RuntimeConfig(
        server_url=server_url,
        port=port,
        store=str(store),
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        inline_push_timeout_s=inline_s,
        bots=(bot,),
    )


def oa_bot_config(app_secret: str, event_secret: str, forward_url: str) -> BotConfig:
    return BotConfig(
        name="oa",
        bot_class="bots.oa:OABot",
        app_id="oa",
        app_secret=app_secret,
        event_secret=event_secret,
        forward_url=forward_url,
        max_event_bytes=16 * 1024,
    )


@pytest.fixture
async def world(
    start_server: Callable[..., Awaitable[Harness]], tmp_path: Path
) -> AsyncIterator[OAWorld]:
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    await server.users(*APPROVERS)
    app_secret, event_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    oa = OASystem(event_secret)
    await oa.start()
    bot = oa_bot_config(app_secret, event_secret, oa.forward_url)
    runtime = BotRuntime(runtime_config(tmp_path / "bots.sqlite3", server.world.http_url, bot))
    await runtime.start()
    await register_app(server.world.http_url, "oa", app_secret, runtime.url("oa", "callback"))
    app = BusinessClient(server.world.http_url, "oa", app_secret)
    yield OAWorld(server, runtime, oa, app)
    await app.close()
    await runtime.stop()
    await oa.stop()


async def card_message(c: Client, track: str, timeout: float = 5.0) -> dict[str, Any]:
    """The card view of the first card message for ``track`` this client gets."""
    ev = await c.next_event(
        "message",
        predicate=lambda e: (
            e.data["kind"] == "card" and e.data["body"]["card"]["out_track_id"] == track
        ),
        timeout=timeout,
    )
    view: dict[str, Any] = ev.data["body"]["card"]
    return view


async def card_reaching(
    c: Client, card_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The first ``card`` event (a new version) for ``card_id`` that satisfies ``pred``."""
    ev = await c.next_event(
        "card", predicate=lambda e: e.data["card_id"] == card_id and pred(e.data), timeout=timeout
    )
    return ev.data


async def act(c: Client, card_id: str, action: str, **inputs: str) -> dict[str, Any]:
    return await c.request(
        "card.act", card_id=card_id, action=action, action_id=uuid.uuid4().hex, inputs=inputs
    )


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not met within {timeout} s")


def card_messages(c: Client, user: str) -> list[dict[str, Any]]:
    """Every card message this client holds in its notice conversation with the bot."""
    held = c.messages(f"n:oa:{user}")
    return [m["body"]["card"] for m in held if m.get("kind") == "card"]


async def test_chain_request_reaches_approvers_and_each_decision_reaches_oa_once(
    world: OAWorld,
) -> None:
    li, wang = await world.server.client("li"), await world.server.client("wang")
    status, answer = await world.oa.send_event(
        world.events_url, leave_request("e1", ["li", "wang"])
    )
    assert status == 201 and answer["state"] == "delivered", answer
    track = track_id("e1")
    views = [await card_message(li, track), await card_message(wang, track)]
    for view in views:
        assert view["title"] == "请假审批：张三请假 3 天"
        assert view["policy"]["type"] == "sequential" and view["actionable_by"] == ["li"]
        assert [a["label"] for a in view["actions"]] == ["同意", "驳回"]
        assert view["inputs"][0]["required_for"] == ["reject"]
    card_id = views[0]["card_id"]

    await act(li, card_id, "approve", comment="同意")
    await until(lambda: len(world.oa.decisions) == 1, what="first decision at OA")
    (first,) = world.oa.decisions.values()
    assert (first["request_id"], first["actor"], first["decision"]) == ("OA-e1", "li", "approve")
    assert (first["state"], first["final"], first["event_id"]) == ("open", False, "e1")
    step = await card_reaching(wang, card_id, lambda v: v["status"]["text"].startswith("li已同意"))
    assert step["status"]["text"] == "li已同意，待wang审批" and step["actionable_by"] == ["wang"]

    await act(wang, card_id, "approve")
    await until(lambda: len(world.oa.decisions) == 2, what="second decision at OA")
    final = [d for d in world.oa.decisions.values() if d["final"]]
    assert [(d["actor"], d["state"]) for d in final] == [("wang", "approved")]
    for c in (li, wang):  # every holder sees the final state and the trail
        view = await card_reaching(c, card_id, lambda v: v["status"]["text"] == "已同意（wang）")
        assert view["state"] == "approved"
        assert [d["actor"] for d in view["decisions"]] == ["li", "wang"]
    await asyncio.sleep(0.3)  # nothing more arrives later
    assert len(world.oa.deliveries) == 2 and len(world.oa.decisions) == 2


@pytest.mark.parametrize(("mode", "policy"), [("countersign", "all"), ("any_leader", "any")])
async def test_reject_needs_a_comment_and_reaches_oa_with_it(
    world: OAWorld, mode: str, policy: str
) -> None:
    clients = [await world.server.client(u) for u in APPROVERS]
    event = leave_request("e-" + mode, APPROVERS, mode=mode, cc=["zhao"])
    status, _ = await world.oa.send_event(world.events_url, event)
    assert status == 201
    view = await card_message(clients[1], track_id("e-" + mode))
    assert view["policy"]["type"] == policy and view["actionable_by"] == APPROVERS
    with pytest.raises(ServerError) as refused:  # 驳回 without 意见
        await act(clients[1], view["card_id"], "reject")
    assert refused.value.code == "invalid_field"
    await act(clients[1], view["card_id"], "reject", comment="材料不全")
    await until(lambda: len(world.oa.decisions) == 1, what="decision at OA")
    (decision,) = world.oa.decisions.values()
    assert (decision["actor"], decision["decision"], decision["comment"]) == (
        "wang",
        "reject",
        "材料不全",
    )
    assert decision["state"] == "rejected" and decision["final"] is True
    for c in clients:  # the rejection and then the bot's status line, at every holder
        final = await card_reaching(
            c, view["card_id"], lambda v: v["state"] == "rejected" and v["status"]["color"] == "red"
        )
        assert final["status"]["text"] == "已驳回（wang）" and final["actionable_by"] == []


async def test_a_repeated_event_is_answered_200_and_pushes_nothing(world: OAWorld) -> None:
    li = await world.server.client("li")
    event = leave_request("e-dup", ["li"], mode="any_leader")
    assert (await world.oa.send_event(world.events_url, event))[0] == 201
    status, answer = await world.oa.send_event(world.events_url, event)
    assert status == 200 and answer["duplicate"] is True and answer["state"] == "delivered"
    await card_message(li, track_id("e-dup"))
    await asyncio.sleep(0.3)
    assert len(card_messages(li, "li")) == 1
    assert (await world.app.get_card(track_id("e-dup")))["version"] == 1


async def test_oa_down_the_forward_is_retried_and_arrives_once(world: OAWorld) -> None:
    li = await world.server.client("li")
    assert (await world.oa.send_event(world.events_url, leave_request("e-down", ["li"])))[0] == 201
    view = await card_message(li, track_id("e-down"))
    world.oa.down = True
    await act(li, view["card_id"], "approve")
    await until(lambda: world.oa.refused >= 3, what="three refused forwards")
    assert world.oa.decisions == {}
    world.oa.down = False
    await until(lambda: len(world.oa.decisions) == 1, what="the decision after the outage")
    await asyncio.sleep(0.5)
    assert len(world.oa.deliveries) == 1
    counts = world.runtime.store.counts("oa")
    assert counts.get("forward.done") == 1 and "forward.pending" not in counts


async def test_withdrawn_request_closes_its_card(world: OAWorld) -> None:
    li = await world.server.client("li")
    assert (await world.oa.send_event(world.events_url, leave_request("e-w", ["li"])))[0] == 201
    view = await card_message(li, track_id("e-w"))
    withdraw = {"event_id": "e-w-x", "type": "oa.withdrawn", "data": {"request_event_id": "e-w"}}
    status, answer = await world.oa.send_event(world.events_url, withdraw)
    assert status == 201, answer
    closed = await card_reaching(li, view["card_id"], lambda v: v["state"] == "closed")
    assert closed["status"]["text"] == "申请人已撤回" and closed["actionable_by"] == []


BAD_EVENTS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("no-approvers", {"approvers": None}, 400, "missing_field", "data.approvers"),
    ("empty-approvers", {"approvers": []}, 400, "invalid_field", "data.approvers"),
    ("bad-mode", {"mode": "whoever"}, 400, "invalid_field", "data.mode"),
    ("no-title", {"title": None}, 400, "missing_field", "data.title"),
    ("unknown-approver", {"approvers": ["li", "nobody"]}, 422, "unknown_approver", None),
]


@pytest.mark.parametrize(("eid", "change", "status", "code", "field"), BAD_EVENTS)
async def test_a_bad_event_gets_a_clear_4xx_and_nothing_is_pushed(
    world: OAWorld, eid: str, change: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    li = await world.server.client("li")
    event = leave_request(eid, ["li"])
    event["data"].update(change)
    event["data"] = {k: v for k, v in event["data"].items() if v is not None}
    got, answer = await world.oa.send_event(world.events_url, event)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"].get("field") == field and answer["error"]["message"]
    with pytest.raises(BusinessError) as missing:
        await world.app.get_card(track_id(eid))
    assert missing.value.status == 404
    assert card_messages(li, "li") == [] and world.runtime.store.counts("oa") == {}
    assert world.runtime.store.event("oa", eid) is None  # a corrected resend is a new event
    fixed = leave_request(eid, ["li"])
    assert (await world.oa.send_event(world.events_url, fixed))[0] == 201


async def test_bad_envelopes_signatures_and_sizes_are_refused(world: OAWorld) -> None:
    url, oa = world.events_url, world.oa
    good = leave_request("e-sig", ["li"])
    cases = [
        (await oa.send_event(url, good, secret=secrets.token_urlsafe(32)), 401, "bad_signature"),
        (await oa.send_raw(url, b'{"event_id": "x"}', sign=False), 401, "missing_header"),
        (await oa.send_raw(url, b"{not json"), 400, "bad_json"),
        (await oa.send_event(url, {**good, "event_id": "a b"}), 400, "invalid_field"),
        (await oa.send_event(url, {**good, "type": "oa.unknown"}), 400, "unknown_event_type"),
        (await oa.send_raw(url, b"x" * (16 * 1024 + 1)), 413, "payload_too_large"),
    ]
    cases.append((await send_chunked(url, b"y" * (64 * 1024)), 413, "payload_too_large"))
    for (status, answer), want_status, want_code in cases:
        assert (status, answer["error"]["code"]) == (want_status, want_code), answer
    assert (
        world.runtime.store.counts("oa") == {} and world.runtime.store.event("oa", "e-sig") is None
    )


async def send_chunked(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` in 1 KiB chunks (chunked encoding: no Content-Length to refuse it by)."""

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1024):
            yield body[i : i + 1024]
            await asyncio.sleep(0)

    async with aiohttp.ClientSession() as s, s.post(url, data=pieces(), headers=headers) as r:
        assert r.headers.get("Content-Type", "").startswith("application/json")
        return r.status, await r.json()


async def test_a_large_event_arriving_in_many_chunks_is_read_whole(world: OAWorld) -> None:
    event = leave_request("e-big", ["li"], summary="长" * 4000)  # ~12 KiB of UTF-8
    body = json.dumps(event, ensure_ascii=False).encode()
    assert 12_000 < len(body) < 16 * 1024
    headers = sign_request("oa-system", world.oa.event_secret, body)
    status, answer = await send_chunked(world.events_url, body, headers)
    assert status == 201, answer
    assert (await world.app.get_card(track_id("e-big")))["body_md"] == "长" * 4000
