"""The dashboard's data endpoints on both store backends: per-unit counts, scope, auth, retry.

A real server (SQLite file, or PostgreSQL), the org synced through the admin
API, cards pushed by a registered app and acted on over real WebSockets,
callbacks to a real HTTP stub; the dashboard read back over HTTP with its
session cookie, as the page reads it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, approval_card, business
from tests.conftest import StartServer
from tests.dashboard_support import (
    DashboardHttp,
    act,
    admin_call,
    by_id,
    grant_admin,
    load_org,
    push,
    soon_ms,
)
from tests.postgres_support import fresh_dsn
from tests.support import Harness


@pytest.fixture(params=["sqlite", "postgres"])
async def dash_server(request: pytest.FixtureRequest, start_server: StartServer) -> Harness:
    store: dict[str, Any] = {"backend": "sqlite"}
    if request.param == "postgres":
        store = {
            "backend": "postgres",
            "dsn": fresh_dsn()[0],
            "pool_min_size": 1,
            "pool_max_size": 4,
        }
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS, store=store)
    await load_org(server)
    return server


async def wait_until(pred: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_per_unit_counts_down_the_levels(dash_server: Harness, stub: BusinessStub) -> None:
    oa: BusinessClient = await business(dash_server, stub)
    village = await dash_server.client("cq-v1-sec")
    a = await push(oa, "a", ["cq-v1-sec", "sk-v1-sec"])  # any-of across both branches
    b = await push(oa, "b", ["xh-head"], due_at=soon_ms(1.0))  # goes overdue
    c = await push(oa, "c", ["cq-head"])
    assert (await act(village, a))["state"] == "approved"
    await asyncio.sleep(1.2)

    dash = DashboardHttp(dash_server)
    try:
        assert (await dash.login(ADMIN_KEY))[0] == 200
        top = await dash.units()
        assert [u["id"] for u in top["children"]] == ["jx"] and top["unit"] is None
        jx = await dash.units("jx")
        rows = by_id(jx)
        assert [u["id"] for u in jx["children"]] == ["nc", "jj"]  # in sort order
        counts = ("people", "pushed", "decided", "pending", "todo", "overdue")
        assert {k: rows["jx"][k] for k in counts} == dict(
            zip(counts, (9, 3, 1, 2, 2, 1), strict=True)
        )
        assert {k: rows["nc"][k] for k in counts} == dict(
            zip(counts, (4, 3, 1, 2, 2, 1), strict=True)
        )
        assert {k: rows["jj"][k] for k in counts} == dict(
            zip(counts, (4, 1, 1, 0, 0, 0), strict=True)
        )
        assert rows["jj"]["oldest"] is None
        assert rows["nc"]["oldest"]["card_id"] == b  # pushed before c
        # Down to the village, with the trail back up.
        cq = await dash.units("nc-xh-cq")
        assert [t["id"] for t in cq["trail"]] == ["jx", "nc", "nc-xh"]
        assert cq["unit"]["level"] == "township" and cq["unit"]["pushed"] == 2
        assert cq["unit"]["oldest"] == {
            "card_id": c,
            "app_id": "oa",
            "created_at": cq["unit"]["oldest"]["created_at"],
        }
        v1 = by_id(cq)["nc-xh-cq-v1"]
        assert (v1["level"], v1["pushed"], v1["decided"], v1["todo"]) == ("village", 1, 1, 0)
        assert (await dash.units("nc-xh-cq-v1"))["children"] == []
        # Unknown unit: 404 with a stable code.
        status, body = await dash.get("/dashboard/api/units?unit=nowhere")
        assert (status, body["error"]["code"]) == (404, "no_such_unit")
        # Operator-only figures.
        _, overview = await dash.get("/dashboard/api/overview")
        assert overview["audit"]["ok"] is True and overview["audit"]["head_seq"] >= 1
        assert set(overview["governance"]) >= {"zombie", "empty", "duplicate", "groups"}
        assert overview["dings"] == {"total": 0, "confirmed": 0, "awaiting": 0}
    finally:
        await dash.close()
        await oa.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_card_sent_to_many_counts_in_every_unit_of_its_holders(
    backend: str, start_server: StartServer, stub: BusinessStub
) -> None:
    """Held through its broadcast conversation (no row per person), still counted per unit."""
    store: dict[str, Any] = {"backend": "sqlite"}
    if backend == "postgres":
        store = {"backend": "postgres", "dsn": fresh_dsn()[0], "pool_min_size": 1}
    server = await start_server(
        auth={"admin_api_key": ADMIN_KEY},
        cards={**CARD_SETTINGS, "broadcast_min_holders": 3},
        store=store,
    )
    await load_org(server)
    oa: BusinessClient = await business(server, stub)
    nanchang = ["nc-mayor", "xh-head", "cq-head", "cq-v1-sec"]
    pushed = await oa.push_card(approval_card("circ", ["cq-head"]), users=nanchang)
    # No notice conversation of their own: the broadcast conversation holds it.
    assert await server.world.store.get_conversation(f"n:oa:{nanchang[0]}") is None
    assert sorted(await server.world.store.card_holders(pushed["card_id"])) == sorted(nanchang)
    dash = DashboardHttp(server)
    try:
        assert (await dash.login(ADMIN_KEY))[0] == 200
        rows = by_id(await dash.units("jx"))
        assert (rows["jx"]["pushed"], rows["nc"]["pushed"], rows["jj"]["pushed"]) == (1, 1, 0)
        assert (rows["nc"]["pending"], rows["nc"]["todo"]) == (1, 1)  # cq-head's todo
        v1 = by_id(await dash.units("nc-xh-cq"))["nc-xh-cq-v1"]
        assert (v1["pushed"], v1["todo"]) == (1, 0)
    finally:
        await dash.close()
        await oa.close()


async def test_scoped_admin_sees_only_their_subtree(dash_server: Harness) -> None:
    await grant_admin(dash_server, "nc-mayor", "nc")
    dash = DashboardHttp(dash_server)
    try:
        status, body = await dash.login(dash_server.token("nc-mayor"))
        assert (status, body) == (200, {"super": False, "user": "nc-mayor"})
        top = await dash.units()
        assert [u["id"] for u in top["children"]] == ["nc"]
        xh = await dash.units("nc-xh")
        assert [t["id"] for t in xh["trail"]] == ["nc"]  # the province above is not theirs
        for unit in ("jj", "jx", "jj-ws-sk-v1"):
            status, body = await dash.get(f"/dashboard/api/units?unit={unit}")
            assert (status, body["error"]["code"]) == (403, "forbidden"), unit
        status, body = await dash.get("/dashboard/api/stream?unit=jj")
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, body = await dash.get("/dashboard/api/callbacks")
        assert (status, body["error"]["code"]) == (403, "forbidden")
        _, overview = await dash.get("/dashboard/api/overview")
        assert set(overview) == {"governance"}  # no DING or audit totals for a subtree
        _, live = await dash.get("/dashboard/api/live")  # this node's numbers, no node table
        assert live["node"] and "nodes" not in live and "cluster" not in live
        # Losing the grant ends what the session may see at once.
        status, _ = await dash.get("/dashboard/api/units")
        assert status == 200
        status, _ = await admin_call(
            dash_server, "DELETE", "/admin/v1/admins", json={"user": "nc-mayor", "unit": "nc"}
        )
        assert status == 200
        status, body = await dash.get("/dashboard/api/units")
        assert (status, body["error"]["code"]) == (403, "forbidden")
    finally:
        await dash.close()


async def test_login_errors_and_unauthenticated_calls(dash_server: Harness) -> None:
    dash = DashboardHttp(dash_server)
    try:
        for path in ("/dashboard/api/units", "/dashboard/api/live", "/dashboard/api/stream"):
            status, body = await dash.get(path)
            assert (status, body["error"]["code"]) == (401, "not_authenticated"), path
        async with dash.session.get("/dashboard/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/dashboard/login")
        status, body = await dash.login("not-the-key")
        assert (status, body["error"]) == (
            401,
            {"code": "token_invalid", "message": "wrong admin key or token"},
        )
        status, body = await dash.login("")
        assert (status, body["error"]["code"]) == (400, "invalid_field")
        status, body = await dash.login(dash_server.token("gov"))  # a user, not an admin
        assert (status, body["error"]["code"]) == (403, "forbidden")
        async with dash.session.post(
            "/dashboard/login",
            json={"credential": ADMIN_KEY},
            headers={"Origin": "http://evil.example"},
        ) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (403, "forbidden")
        assert (await dash.get("/dashboard/api/units"))[0] == 401  # none of those logged in

        assert (await dash.login(ADMIN_KEY))[0] == 200
        cookie = next(c for c in dash.session.cookie_jar if c.key == "imserver_dashboard")
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert cookie["path"] == "/dashboard/"
        async with dash.session.get("/dashboard/") as r:
            assert r.status == 200 and "default-src 'self'" in r.headers["Content-Security-Policy"]
        status, body = await dash.post("/dashboard/logout", csrf=False)
        assert (status, body["error"]["code"]) == (403, "forbidden")  # no CSRF token: refused
        assert (await dash.post("/dashboard/logout"))[0] == 200
        assert (await dash.get("/dashboard/api/units"))[0] == 401
    finally:
        await dash.close()


async def test_outbox_per_app_and_the_retry_button(
    dash_server: Harness, stub: BusinessStub
) -> None:
    oa = await business(dash_server, stub)
    head = await dash_server.client("cq-head")
    stub.script = ["500"] * CARD_SETTINGS["callback_max_attempts"]
    card = await push(oa, "fails", ["cq-head"])
    await act(head, card)
    dash = DashboardHttp(dash_server)
    try:
        assert (await dash.login(ADMIN_KEY))[0] == 200

        async def failed() -> dict[str, Any] | None:
            body = (await dash.get("/dashboard/api/callbacks"))[1]
            return body if body["failed"] else None

        body = await wait_until(failed)
        assert body["apps"] == [
            {"app_id": "oa", "pending": 0, "failed": 1, "oldest_pending_at": None}
        ]
        (item,) = body["failed"]
        assert item["card_id"] == card and item["attempts"] == 4
        retry = f"/dashboard/api/callbacks/{card}/{item['action_id']}/retry"
        status, err = await dash.post(retry, csrf=False)
        assert (status, err["error"]["code"]) == (403, "forbidden")
        status, ok = await dash.post(retry)
        assert (status, ok["state"]) == (200, "pending")
        await asyncio.wait_for(stub.got_action.wait(), 5)

        async def cleared() -> bool:
            apps: list[Any] = (await dash.get("/dashboard/api/callbacks"))[1]["apps"]
            return apps == []

        await wait_until(cleared)
        status, err = await dash.post(f"/dashboard/api/callbacks/{card}/nope/retry")
        assert (status, err["error"]["code"]) == (404, "no_such_callback")
    finally:
        await dash.close()
        await oa.close()


async def read_events(resp: Any, wanted: set[str], limit: int = 20) -> dict[str, Any]:
    """Server-Sent Events from ``resp`` until one of each ``wanted`` name (or an error) came."""
    got: dict[str, Any] = {}
    name = ""
    for _ in range(limit * 4):
        line = (await asyncio.wait_for(resp.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            got[name] = orjson.loads(line[len("data: ") :])
            if wanted <= set(got) or name == "error":
                return got
    raise AssertionError(f"events seen: {sorted(got)}")


async def test_the_live_feed_pushes_and_ends_when_the_grant_goes(dash_server: Harness) -> None:
    await grant_admin(dash_server, "xh-head", "nc-xh")
    dash = DashboardHttp(dash_server)
    try:
        assert (await dash.login(dash_server.token("xh-head")))[0] == 200
        async with dash.session.get("/dashboard/api/stream?unit=nc-xh") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            first = await read_events(resp, {"work", "live"})
            assert first["work"]["units"]["unit"]["id"] == "nc-xh"
            assert "callbacks" not in first["work"]  # the operator's only
            assert set(first["live"]) >= {"connections", "users", "rates", "latency_ms", "node"}
            assert "nodes" not in first["live"] and "cluster" not in first["live"]  # operator's
            status, _ = await admin_call(
                dash_server, "DELETE", "/admin/v1/admins", json={"user": "xh-head", "unit": "nc-xh"}
            )
            assert status == 200
            last = await read_events(resp, {"error"})
            assert last["error"]["error"]["code"] == "forbidden"
    finally:
        await dash.close()


async def test_static_files_and_a_missing_one_answers_the_error_object(
    start_server: StartServer,
) -> None:
    """A file of static/ is served; a missing one (or one outside) is ``404 not_found``."""
    server = await start_server()
    base = server.world.http_url + "/dashboard/static/"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "dashboard.js") as r:
            assert r.status == 200 and "javascript" in r.headers["Content-Type"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        for name in ("nope.js", "vendor", "..%2F..%2Fpyproject.toml", "vendor/../../routes.py"):
            async with s.get(base + name) as r:
                body = await r.json()
                assert (r.status, body["error"]["code"]) == (404, "not_found"), name
