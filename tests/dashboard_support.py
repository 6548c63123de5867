"""Dashboard tests' helpers: a five-level sample org, a logged-in HTTP client, a card scenario.

``DashboardHttp`` is a real aiohttp client with its own cookie jar (loopback
IPs need ``unsafe=True`` to keep cookies), so it holds the session cookie
exactly as a browser does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import orjson

from imserver_sdk import BusinessClient, Client
from tests.cards_support import ADMIN_KEY, approval_card
from tests.support import Harness

#: 江西省 down to two villages, in two branches (南昌 and 九江).
UNITS: list[dict[str, Any]] = [
    {"op": "unit", "id": "jx", "name": "江西省", "level": "province"},
    {"op": "unit", "id": "nc", "name": "南昌市", "level": "city", "parent": "jx", "sort": 1},
    {"op": "unit", "id": "jj", "name": "九江市", "level": "city", "parent": "jx", "sort": 2},
    {"op": "unit", "id": "nc-xh", "name": "新建区", "level": "county", "parent": "nc"},
    {"op": "unit", "id": "nc-xh-cq", "name": "长堎镇", "level": "township", "parent": "nc-xh"},
    {"op": "unit", "id": "nc-xh-cq-v1", "name": "长堎村", "level": "village", "parent": "nc-xh-cq"},
    {"op": "unit", "id": "jj-ws", "name": "武宁县", "level": "county", "parent": "jj"},
    {"op": "unit", "id": "jj-ws-sk", "name": "宋溪镇", "level": "township", "parent": "jj-ws"},
    {"op": "unit", "id": "jj-ws-sk-v1", "name": "宋溪村", "level": "village", "parent": "jj-ws-sk"},
]
#: user -> unit; one person per unit.
PEOPLE = {
    "gov": "jx",
    "nc-mayor": "nc",
    "xh-head": "nc-xh",
    "cq-head": "nc-xh-cq",
    "cq-v1-sec": "nc-xh-cq-v1",
    "jj-mayor": "jj",
    "ws-head": "jj-ws",
    "sk-head": "jj-ws-sk",
    "sk-v1-sec": "jj-ws-sk-v1",
}


def org_ndjson() -> bytes:
    members = [
        {
            "op": "member",
            "user": u,
            "name": u,
            "units": [{"unit": unit, "title": "", "leader": False}],
        }
        for u, unit in PEOPLE.items()
    ]
    return b"\n".join(orjson.dumps(line) for line in [*UNITS, *members]) + b"\n"


async def admin_call(
    server: Harness, method: str, path: str, *, json: Any = None, data: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if data is not None:
        headers["Content-Type"] = "application/x-ndjson"
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, server.world.http_url + path, json=json, data=data, headers=headers) as r,
    ):
        return r.status, await r.json()


async def load_org(server: Harness) -> None:
    status, body = await admin_call(
        server, "POST", "/admin/v1/directory/sync?mode=full", data=org_ndjson()
    )
    assert status == 200, body


async def grant_admin(server: Harness, user: str, unit: str) -> None:
    status, body = await admin_call(
        server, "POST", "/admin/v1/admins", json={"user": user, "unit": unit}
    )
    assert status == 201, body


class DashboardHttp:
    """A browser-like HTTP client of the dashboard: cookie jar, same-origin headers."""

    def __init__(self, server: Harness | str) -> None:
        """``server``: a test harness, or a node's HTTP base URL (a child process)."""
        self.base = server if isinstance(server, str) else server.world.http_url
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), base_url=self.base
        )
        self.csrf = ""

    async def login(self, credential: str) -> tuple[int, dict[str, Any]]:
        async with self.session.post("/dashboard/login", json={"credential": credential}) as r:
            body = await r.json()
            status = r.status
        if status == 200:
            self.csrf = (await self.get("/dashboard/api/session"))[1]["csrf"]
        return status, body

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(path, allow_redirects=False) as r:
            return r.status, await r.json()

    async def post(
        self, path: str, *, csrf: bool = True, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        hdrs = {"X-CSRF-Token": self.csrf} if csrf else {}
        hdrs.update(headers or {})
        async with self.session.post(path, headers=hdrs) as r:
            return r.status, await r.json()

    async def units(self, unit: str | None = None) -> dict[str, Any]:
        status, body = await self.get("/dashboard/api/units" + (f"?unit={unit}" if unit else ""))
        assert status == 200, body
        return body

    async def close(self) -> None:
        await self.session.close()


def by_id(units: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A units answer's rows (the unit itself and its children) by unit id."""
    rows = list(units["children"])
    if units["unit"] is not None:
        rows.append(units["unit"])
    return {r["id"]: r for r in rows}


async def act(c: Client, card_id: str, action: str = "approve") -> dict[str, Any]:
    answer: dict[str, Any] = await c.request(
        "card.act", card_id=card_id, action=action, action_id=uuid.uuid4().hex, inputs={}
    )
    return answer


async def push(oa: BusinessClient, track: str, actors: list[str], **extra: Any) -> str:
    pushed = await oa.push_card(approval_card(track, actors, **extra), users=actors)
    card_id: str = pushed["card_id"]
    return card_id


def soon_ms(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)
