"""Dashboard logout (and token revocation) ends the session on every node, open streams included.

The cookie is signed, not stored, so any node accepts it; a logout is
therefore recorded in the store (``dashboard_logouts``) and announced on the
bus (``dashboard_logout``). Cluster tests: two real ``python -m imserver
serve`` processes on one PostgreSQL schema and one Redis (tests/cluster_support.py);
the session is made and ended on node A and used on node B, including a B
that was down during the logout (only the store can tell it). Single-node
tests on SQLite: the same over one server, a token revocation ending the
stream at once, and the store's record on both backends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from imserver.bus.local import LocalBus
from imserver.dashboard.auth import CODEC
from imserver.dashboard.logouts import REFRESH_S, LoggedOutSessions
from imserver.dashboard.session import COOKIE
from tests.cards_support import ADMIN_KEY
from tests.cluster_support import Cluster
from tests.conftest import StartServer
from tests.dashboard_support import DashboardHttp, admin_call, grant_admin, load_org
from tests.postgres_support import fresh_dsn
from tests.redis_support import require_redis
from tests.support import Harness

#: A logout must reach another node well inside the store re-read (the bus, not the poll).
BUS_WITHIN_S = 2.5


def cookie_of(dash: DashboardHttp) -> str:
    return next(c.value for c in dash.session.cookie_jar if c.key == COOKIE)


def holding(base: str, cookie: str) -> DashboardHttp:
    """A browser on ``base`` that holds a copy of ``cookie`` (as a second screen would)."""
    dash = DashboardHttp(base)
    dash.session.cookie_jar.update_cookies({COOKIE: cookie}, URL(base + "/dashboard/"))
    return dash


async def refused_within(dash: DashboardHttp, timeout_s: float) -> float:
    """Seconds until ``/dashboard/api/units`` answers ``401 not_authenticated``."""
    start = time.monotonic()
    while True:
        status, body = await dash.get("/dashboard/api/units")
        if status == 401:
            assert body["error"]["code"] == "not_authenticated", body
            return time.monotonic() - start
        assert status == 200, body
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"the session still worked after {timeout_s} s")
        await asyncio.sleep(0.05)


async def next_event(resp: aiohttp.ClientResponse, timeout_s: float) -> tuple[str, Any]:
    """The next Server-Sent Event ``(name, data)``, or ``("", None)`` when the stream ended."""
    name = ""
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), timeout_s)
        if not raw:
            return "", None
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            return name, orjson.loads(line[len("data: ") :])


async def ended_with(resp: aiohttp.ClientResponse, timeout_s: float) -> tuple[str, float]:
    """Read until the stream's ``error`` event and its end: (error code, seconds taken)."""
    start = time.monotonic()
    code = ""
    while True:
        left = timeout_s - (time.monotonic() - start)
        if left <= 0:
            raise AssertionError(f"the stream was still open after {timeout_s} s")
        name, data = await next_event(resp, left)
        if name == "error":
            code = data["error"]["code"]
        elif name == "":
            assert code, "the stream ended without an error event"
            return code, time.monotonic() - start
        else:
            assert not code, f"a {name!r} event after the error"


async def logout(dash: DashboardHttp) -> None:
    status, body = await dash.post("/dashboard/logout")
    assert (status, body) == (200, {"logged_out": True})


# -- two nodes: PostgreSQL + Redis ---------------------------------------------------------


@pytest.mark.slow
async def test_logout_on_node_a_ends_the_session_and_its_stream_on_node_b() -> None:
    cluster = Cluster(2, require_redis())
    opened: list[DashboardHttp] = []
    try:
        await cluster.start(["alice"])
        a, b = cluster.nodes
        on_a = DashboardHttp(a.http_url)
        opened.append(on_a)
        assert (await on_a.login(ADMIN_KEY))[0] == 200
        on_b = holding(b.http_url, cookie_of(on_a))
        opened.append(on_b)
        status, body = await on_b.get("/dashboard/api/session")
        assert status == 200 and body["super"] is True  # node B accepts A's cookie
        assert (await on_b.get("/dashboard/api/units"))[0] == 200

        async with on_b.session.get("/dashboard/api/stream") as feed:
            assert feed.status == 200
            assert (await next_event(feed, 10))[0] == "work"
            assert (await next_event(feed, 10))[0] == "live"
            await logout(on_a)
            assert (await on_a.get("/dashboard/api/units"))[0] == 401  # A: at once
            code, took = await ended_with(feed, BUS_WITHIN_S)
            assert code == "not_authenticated"
            assert took < BUS_WITHIN_S, took
        assert await refused_within(on_b, BUS_WITHIN_S) < BUS_WITHIN_S
        async with on_b.session.get("/dashboard/api/stream") as again:
            assert again.status == 401  # a new stream with the cookie is refused too
    finally:
        for dash in opened:
            await dash.close()
        cluster.close()


@pytest.mark.slow
async def test_a_node_that_was_down_during_the_logout_refuses_the_session() -> None:
    cluster = Cluster(2, require_redis())
    opened: list[DashboardHttp] = []
    try:
        await cluster.start(["alice"])
        a, b = cluster.nodes
        on_a = DashboardHttp(a.http_url)
        opened.append(on_a)
        assert (await on_a.login(ADMIN_KEY))[0] == 200
        cookie = cookie_of(on_a)
        on_b = holding(b.http_url, cookie)
        opened.append(on_b)
        assert (await on_b.get("/dashboard/api/units"))[0] == 200

        b.stop()  # B hears no bus event: only the store can tell it
        await logout(on_a)
        b.start()
        await b.wait_ready()
        status, body = await on_b.get("/dashboard/api/units")
        assert (status, body["error"]["code"]) == (401, "not_authenticated")
        async with on_b.session.get("/dashboard/api/stream") as feed:
            assert feed.status == 401

        fresh = DashboardHttp(b.http_url)  # B itself works: a new login is accepted
        opened.append(fresh)
        assert (await fresh.login(ADMIN_KEY))[0] == 200
        assert (await fresh.get("/dashboard/api/units"))[0] == 200
    finally:
        for dash in opened:
            await dash.close()
        cluster.close()


# -- one node: SQLite ----------------------------------------------------------------------


@pytest.fixture
async def sqlite_server(start_server: StartServer) -> Harness:
    server = await start_server(auth={"admin_api_key": ADMIN_KEY})
    await load_org(server)
    return server


async def test_logout_ends_another_screens_session_and_stream(sqlite_server: Harness) -> None:
    base = sqlite_server.world.http_url
    screen = DashboardHttp(base)
    other = None
    try:
        assert (await screen.login(ADMIN_KEY))[0] == 200
        cookie = cookie_of(screen)
        other = holding(base, cookie)  # the wall screen keeps the cookie; the laptop logs out
        other.csrf = screen.csrf
        async with other.session.get("/dashboard/api/stream") as feed:
            assert feed.status == 200
            assert (await next_event(feed, 10))[0] == "work"
            started = time.monotonic()
            await logout(screen)
            code, _ = await ended_with(feed, BUS_WITHIN_S)
            assert code == "not_authenticated"
            assert time.monotonic() - started < BUS_WITHIN_S
        status, body = await other.get("/dashboard/api/live")
        assert (status, body["error"]["code"]) == (401, "not_authenticated")
        async with other.session.get("/dashboard/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/dashboard/login")

        # The record outlives this node's memory: a fresh reader (a restarted node) sees it.
        rows = await sqlite_server.world.store.dashboard_logouts(int(time.time()), 10)
        assert len(rows) == 1 and rows[0][1] > time.time()
        reader = LoggedOutSessions(sqlite_server.world.store, LocalBus())
        assert await reader.is_logged_out(rows[0][0])
        assert not await reader.is_logged_out("some-other-session")
    finally:
        await screen.close()
        if other is not None:
            await other.close()


async def test_revoking_the_admins_token_ends_their_stream_at_once(
    sqlite_server: Harness,
) -> None:
    await grant_admin(sqlite_server, "xh-head", "nc-xh")
    dash = DashboardHttp(sqlite_server)
    try:
        assert (await dash.login(sqlite_server.token("xh-head")))[0] == 200
        async with dash.session.get("/dashboard/api/stream?unit=nc-xh") as feed:
            assert feed.status == 200
            assert (await next_event(feed, 10))[0] == "work"
            status, _ = await admin_call(
                sqlite_server, "POST", "/admin/v1/revoke", json={"user": "xh-head"}
            )
            assert status == 200
            code, took = await ended_with(feed, 2.0)  # the bus event, not the 3 s re-check
            assert code == "token_revoked"
            assert took < 2.0, took
        status, body = await dash.get("/dashboard/api/units")
        assert (status, body["error"]["code"]) == (401, "token_revoked")
    finally:
        await dash.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_store_keeps_a_logout_until_the_session_expires(
    start_server: StartServer, backend: str
) -> None:
    store_cfg: dict[str, Any] = {"backend": "sqlite"}
    if backend == "postgres":
        store_cfg = {"backend": "postgres", "dsn": fresh_dsn()[0], "pool_min_size": 1}
    server = await start_server(store=store_cfg)
    store = server.world.store
    now = int(time.time())
    await store.add_dashboard_logout("soon", now + 10, now)
    await store.add_dashboard_logout("later", now + 100, now)
    await store.add_dashboard_logout("later", now + 100, now)  # a repeat changes nothing
    assert await store.dashboard_logouts(now, 10) == [("later", now + 100), ("soon", now + 10)]
    assert await store.dashboard_logouts(now + 10, 10) == [("later", now + 100)]  # expired
    await store.add_dashboard_logout("third", now + 200, now + 20)  # purges "soon"
    assert await store.dashboard_logouts(0, 10) == [("third", now + 200), ("later", now + 100)]
    assert await store.dashboard_logouts(now, 1) == [("third", now + 200)]


async def test_a_node_that_missed_the_bus_event_refuses_within_the_refresh(
    sqlite_server: Harness,
) -> None:
    """A reader on its own bus (a node cut from Redis) learns of the logout from the store."""
    dash = DashboardHttp(sqlite_server)
    try:
        assert (await dash.login(ADMIN_KEY))[0] == 200
        sid = sqlite_server.world.http_app[CODEC].decode(cookie_of(dash), time.time())
        assert sid is not None
        cut_off = LoggedOutSessions(sqlite_server.world.store, LocalBus(), refresh_s=1.0)
        assert not await cut_off.is_logged_out(sid.sid)  # read the store once
        await logout(dash)
        assert not await cut_off.is_logged_out(sid.sid)  # memory only until the next read
        await asyncio.sleep(1.05)
        assert await cut_off.is_logged_out(sid.sid)
        assert REFRESH_S <= 5.0  # the server's own re-read: "within seconds" without the bus
    finally:
        await dash.close()
