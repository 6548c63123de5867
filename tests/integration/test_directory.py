"""The organisation directory end to end: HR sync, queries, removal, unit pushes, scoped admins.

Every test syncs a small province tree over the real admin API (NDJSON), then
looks at the result only through public surfaces: the admin query routes, the
WebSocket protocol (SDK and raw clients) and the business-system API.

江西 jx (province)
├── 南昌 nc (city)
│   ├── 新建区 nc-xh (county)
│   │   ├── 区政府办公室 nc-xh-office (department)
│   │   │   └── 信息科 nc-xh-office-it (department)
│   │   └── 长堎镇 nc-xh-cq (township)
│   │       └── 长堎村 nc-xh-cq-v1 (village)
│   └── 进贤县 nc-jx (county)
│       └── 民和镇 nc-jx-ml (township)
│           └── 民和村 nc-jx-ml-v1 (village)
└── 九江 jj (city)
    └── 武宁县 jj-ws (county)
        └── 宋溪镇 jj-ws-sk (township)
            └── 宋溪村 jj-ws-sk-v1 (village)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import orjson
import pytest

from imserver_sdk import BusinessClient, BusinessError, Client
from tests.cards_support import ADMIN_KEY, BusinessStub, register_app
from tests.support import Harness

Connect = Callable[..., Awaitable[Client]]

UNITS: list[dict[str, Any]] = [
    {"op": "unit", "id": "jx", "name": "江西省", "level": "province"},
    {"op": "unit", "id": "nc", "name": "南昌市", "level": "city", "parent": "jx", "sort": 1},
    {"op": "unit", "id": "jj", "name": "九江市", "level": "city", "parent": "jx", "sort": 2},
    {"op": "unit", "id": "nc-xh", "name": "新建区", "level": "county", "parent": "nc"},
    {"op": "unit", "id": "nc-jx", "name": "进贤县", "level": "county", "parent": "nc"},
    {"op": "unit", "id": "jj-ws", "name": "武宁县", "level": "county", "parent": "jj"},
    {
        "op": "unit",
        "id": "nc-xh-office",
        "name": "新建区政府办公室",
        "level": "department",
        "parent": "nc-xh",
    },
    {
        "op": "unit",
        "id": "nc-xh-office-it",
        "name": "信息科",
        "level": "department",
        "parent": "nc-xh-office",
    },
    {"op": "unit", "id": "nc-xh-cq", "name": "长堎镇", "level": "township", "parent": "nc-xh"},
    {
        "op": "unit",
        "id": "nc-xh-cq-v1",
        "name": "长堎村",
        "level": "village",
        "parent": "nc-xh-cq",
    },
    {"op": "unit", "id": "nc-jx-ml", "name": "民和镇", "level": "township", "parent": "nc-jx"},
    {
        "op": "unit",
        "id": "nc-jx-ml-v1",
        "name": "民和村",
        "level": "village",
        "parent": "nc-jx-ml",
    },
    {"op": "unit", "id": "jj-ws-sk", "name": "宋溪镇", "level": "township", "parent": "jj-ws"},
    {
        "op": "unit",
        "id": "jj-ws-sk-v1",
        "name": "宋溪村",
        "level": "village",
        "parent": "jj-ws-sk",
    },
]


def _m(user: str, name: str, *units: tuple[str, str, bool], **profile: str) -> dict[str, Any]:
    line: dict[str, Any] = {
        "op": "member",
        "user": user,
        "name": name,
        "units": [{"unit": u, "title": t, "leader": lead} for u, t, lead in units],
    }
    if profile:
        line["profile"] = profile
    return line


MEMBERS: list[dict[str, Any]] = [
    _m(
        "gov",
        "省长",
        ("jx", "省长", True),
        phone="13812341234",
        id_number="360102197001011234",
        email="gov@jx.gov.cn",
        office_phone="0791-88912345",
    ),
    _m("nc-mayor", "南昌市长", ("nc", "市长", True)),
    _m("jj-mayor", "九江市长", ("jj", "市长", True)),
    _m(
        "xh-head",
        "新建区长",
        ("nc-xh", "区长", True),
        phone="13912345678",
        id_number="36012219800101567X",
        email="xh-head@xinjian.gov.cn",
    ),
    _m("xh-clerk", "办公室科员", ("nc-xh-office", "科员", False)),
    # Two units: a non-leading deputy of the county, and the head of its office.
    _m(
        "xh-office-dir",
        "办公室主任",
        ("nc-xh", "副区长", False),
        ("nc-xh-office", "主任", True),
    ),
    _m("xh-admin", "信息科管理员", ("nc-xh-office-it", "管理员", False)),
    _m("cq-head", "长堎镇长", ("nc-xh-cq", "镇长", True)),
    _m("cq-v1-sec", "长堎村支书", ("nc-xh-cq-v1", "村支书", True)),
    _m("cq-v1-clerk", "长堎村文书", ("nc-xh-cq-v1", "文书", False)),
    _m("jx-head", "进贤县长", ("nc-jx", "县长", True)),
    _m("ml-head", "民和镇长", ("nc-jx-ml", "镇长", True)),
    _m("ml-v1-sec", "民和村支书", ("nc-jx-ml-v1", "村支书", True)),
    _m("ws-head", "武宁县长", ("jj-ws", "县长", True)),
    _m("sk-head", "宋溪镇长", ("jj-ws-sk", "镇长", True)),
    _m("sk-v1-sec", "宋溪村支书", ("jj-ws-sk-v1", "村支书", True)),
    # Two counties in two cities: stationed in 长堎镇, seconded to 宋溪镇.
    _m("dual", "挂职干部", ("nc-xh-cq", "驻镇干部", False), ("jj-ws-sk", "挂职副镇长", False)),
]
ALL_USERS = [m["user"] for m in MEMBERS]
N_UNITS, N_MEMBERS = len(UNITS), len(MEMBERS)
N_MEMBERSHIPS = sum(len(m["units"]) for m in MEMBERS)
# Active members of the 新建区 subtree (recursive), and its direct members.
XH_ALL = {
    "xh-head",
    "xh-clerk",
    "xh-office-dir",
    "xh-admin",
    "cq-head",
    "cq-v1-sec",
    "cq-v1-clerk",
    "dual",
}
XH_DIRECT = {"xh-head", "xh-office-dir"}

ZERO: dict[str, Any] = {
    "units": {"created": 0, "updated": 0, "moved": 0, "removed": 0},
    "members": {"created": 0, "updated": 0, "removed": 0},
    "memberships": {"added": 0, "removed": 0},
}


# -- helpers ------------------------------------------------------------------


def ndjson(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def report(lines: int, **changes: dict[str, int]) -> dict[str, Any]:
    """The expected sync answer: all zeros except ``changes`` (e.g. units={"moved": 1})."""
    out: dict[str, Any] = {k: dict(v) for k, v in ZERO.items()}
    for section, values in changes.items():
        out[section].update(values)
    out["lines"] = lines
    return out


async def api(
    server: Harness,
    method: str,
    path: str,
    *,
    token: str | None = ADMIN_KEY,
    json: Any = None,
    data: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One admin API call; returns (status, decoded JSON body)."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=300)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.request(method, server.world.http_url + path, headers=hdrs, json=json, data=data) as r,
    ):
        body = await r.read()
        return r.status, orjson.loads(body) if body else {}


async def sync(
    server: Harness, lines: Iterable[dict[str, Any]] | bytes, mode: str = "full"
) -> tuple[int, dict[str, Any]]:
    body = lines if isinstance(lines, bytes) else ndjson(lines)
    return await api(
        server,
        "POST",
        f"/admin/v1/directory/sync?mode={mode}",
        data=body,
        headers={"Content-Type": "application/x-ndjson"},
    )


async def sync_ok(
    server: Harness, lines: Iterable[dict[str, Any]] | bytes, mode: str = "full"
) -> dict[str, Any]:
    status, body = await sync(server, lines, mode)
    assert status == 200, body
    assert body.pop("mode") == mode
    return body


async def sync_error(
    server: Harness, lines: Iterable[dict[str, Any]] | bytes, field: str, mode: str = "full"
) -> dict[str, Any]:
    status, body = await sync(server, lines, mode)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_field", body
    assert body["error"]["field"] == field, body
    error: dict[str, Any] = body["error"]
    return error


async def load_tree(server: Harness) -> dict[str, Any]:
    return await sync_ok(server, [*UNITS, *MEMBERS])


async def get_ok(server: Harness, path: str, token: str = ADMIN_KEY) -> dict[str, Any]:
    status, body = await api(server, "GET", path, token=token)
    assert status == 200, (path, body)
    return body


async def units_under(server: Harness, unit: str, depth: int = 10) -> dict[str, dict[str, Any]]:
    body = await get_ok(server, f"/admin/v1/units/{unit}?depth={depth}")
    return {u["id"]: u for u in body["units"]}


async def member_rows(
    server: Harness, unit: str, recursive: bool, limit: int = 5000, token: str = ADMIN_KEY
) -> list[dict[str, Any]]:
    """Every row of a unit's member listing, following ``next_after`` page by page."""
    rows: list[dict[str, Any]] = []
    after = ""
    for _ in range(10_000):
        page = await get_ok(
            server,
            f"/admin/v1/units/{unit}/members?recursive={str(recursive).lower()}"
            f"&limit={limit}&after={after}",
            token,
        )
        assert len(page["members"]) <= limit
        rows.extend(page["members"])
        if page["next_after"] is None:
            return rows
        assert page["next_after"].startswith(page["members"][-1]["user"] + "|")  # opaque cursor
        after = page["next_after"]
    raise AssertionError("paging never ended")


async def member_ids(server: Harness, unit: str, recursive: bool) -> set[str]:
    return {r["user"] for r in await member_rows(server, unit, recursive)}


async def wait_for(pred: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def connect(card_server: Harness) -> AsyncIterator[Connect]:
    """SDK clients for synced users.

    ``Harness.client`` would upsert the user first (renaming them to their id,
    which a later sync would report as an update); these connect as they are.
    """
    clients: list[Client] = []

    async def make(user: str, reconnect: bool = True) -> Client:
        c = Client(
            card_server.url,
            card_server.token(user),
            reconnect=reconnect,
            backoff_initial=0.05,
            backoff_max=0.5,
        )
        await c.connect()
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


# -- 1. full sync, idempotency, queries ----------------------------------------


async def test_full_sync_builds_tree_and_is_idempotent(card_server: Harness) -> None:
    first = await load_tree(card_server)
    assert first == report(
        N_UNITS + N_MEMBERS,
        units={"created": N_UNITS},
        members={"created": N_MEMBERS},
        memberships={"added": N_MEMBERSHIPS},
    )
    assert (N_UNITS, N_MEMBERS, N_MEMBERSHIPS) == (14, 17, 19)
    # The same sync again changes nothing.
    assert await load_tree(card_server) == report(N_UNITS + N_MEMBERS)

    # Subtree by depth, in path order, with rewritten paths.
    only = (await get_ok(card_server, "/admin/v1/units/nc?depth=0"))["units"]
    assert only == [
        {"id": "nc", "parent": "jx", "name": "南昌市", "level": "city", "path": "/jx/nc/"}
    ]
    one = (await get_ok(card_server, "/admin/v1/units/nc"))["units"]  # depth defaults to 1
    assert [u["id"] for u in one] == ["nc", "nc-jx", "nc-xh"]
    two = (await get_ok(card_server, "/admin/v1/units/nc?depth=2"))["units"]
    assert [u["path"] for u in two] == sorted(u["path"] for u in two)
    assert {u["id"] for u in two} == {
        "nc",
        "nc-jx",
        "nc-xh",
        "nc-jx-ml",
        "nc-xh-office",
        "nc-xh-cq",
    }
    everything = await units_under(card_server, "jx")
    assert set(everything) == {u["id"] for u in UNITS}
    assert everything["nc-xh-cq-v1"] == {
        "id": "nc-xh-cq-v1",
        "parent": "nc-xh-cq",
        "name": "长堎村",
        "level": "village",
        "path": "/jx/nc/nc-xh/nc-xh-cq/nc-xh-cq-v1/",
    }
    assert everything["nc-xh-office-it"]["path"] == "/jx/nc/nc-xh/nc-xh-office/nc-xh-office-it/"
    status, body = await api(card_server, "GET", "/admin/v1/units/nowhere")
    assert (status, body["error"]["code"]) == (404, "no_such_unit")
    status, body = await api(card_server, "GET", "/admin/v1/units/nc?depth=11")
    assert (status, body["error"]["field"]) == (400, "depth")

    # Members: direct only, or the whole subtree (one row per membership).
    direct = await member_rows(card_server, "nc-xh", recursive=False)
    assert direct == [
        {"user": "xh-head", "name": "新建区长", "unit": "nc-xh", "title": "区长", "leader": True},
        {
            "user": "xh-office-dir",
            "name": "办公室主任",
            "unit": "nc-xh",
            "title": "副区长",
            "leader": False,
        },
    ]
    assert await member_ids(card_server, "nc-xh", recursive=True) == XH_ALL
    assert await member_ids(card_server, "jx", recursive=True) == set(ALL_USERS)
    assert await member_ids(card_server, "jx", recursive=False) == {"gov"}
    assert await member_ids(card_server, "nc-xh-cq-v1", recursive=True) == {
        "cq-v1-sec",
        "cq-v1-clerk",
    }

    # Placement: each unit with its chain up to the province, naming the leaders.
    clerk = await get_ok(card_server, "/admin/v1/users/cq-v1-clerk")
    assert (clerk["user"], clerk["name"], clerk["profile"]) == ("cq-v1-clerk", "长堎村文书", {})
    [placed] = clerk["units"]
    assert (placed["unit"]["id"], placed["title"], placed["leader"]) == (
        "nc-xh-cq-v1",
        "文书",
        False,
    )
    # Nearest first (the member's own unit leads the chain), up to the province.
    assert [(c["id"], c["leaders"]) for c in placed["chain"]] == [
        ("nc-xh-cq-v1", ["cq-v1-sec"]),
        ("nc-xh-cq", ["cq-head"]),
        ("nc-xh", ["xh-head"]),
        ("nc", ["nc-mayor"]),
        ("jx", ["gov"]),
    ]
    assert placed["chain"][1]["name"] == "长堎镇" and placed["chain"][4]["level"] == "province"

    director = await get_ok(card_server, "/admin/v1/users/xh-office-dir")
    assert [(p["unit"]["id"], p["title"], p["leader"]) for p in director["units"]] == [
        ("nc-xh", "副区长", False),
        ("nc-xh-office", "主任", True),
    ]
    office_chain = director["units"][1]["chain"]
    # A leader is never listed as their own superior.
    assert [(c["id"], c["leaders"]) for c in office_chain] == [
        ("nc-xh-office", []),
        ("nc-xh", ["xh-head"]),
        ("nc", ["nc-mayor"]),
        ("jx", ["gov"]),
    ]

    # The profile comes back with its four fields (masking is checked with a scoped
    # admin in test_scoped_admins: the operator's key may be entitled to clear values).
    gov = await get_ok(card_server, "/admin/v1/users/gov")
    assert set(gov["profile"]) == {"phone", "id_number", "email", "office_phone"}
    assert (gov["profile"]["email"], gov["profile"]["office_phone"]) == (
        "gov@jx.gov.cn",
        "0791-88912345",
    )
    status, body = await api(card_server, "GET", "/admin/v1/users/nobody")
    assert (status, body["error"]["code"]) == (404, "no_such_user")


async def test_member_paging_returns_the_same_rows_as_one_page(card_server: Harness) -> None:
    """Paging with ``next_after`` must neither lose nor repeat rows.

    xh-office-dir has two memberships inside 新建区, so a recursive listing
    has two rows for them; a page boundary between those rows must not drop
    the second one.
    """
    await load_tree(card_server)
    whole = await member_rows(card_server, "nc-xh", recursive=True, limit=5000)
    assert [(r["user"], r["unit"]) for r in whole if r["user"] == "xh-office-dir"] == [
        ("xh-office-dir", "nc-xh"),
        ("xh-office-dir", "nc-xh-office"),
    ]
    for limit in (1, 2, 3):
        paged = await member_rows(card_server, "nc-xh", recursive=True, limit=limit)
        assert paged == whole, f"limit={limit}"


# -- 2. moves --------------------------------------------------------------------


async def test_moving_a_county_rewrites_its_subtree(card_server: Harness) -> None:
    await load_tree(card_server)
    assert "jx-head" in await member_ids(card_server, "nc", recursive=True)
    # 进贤县 moves from 南昌 to 九江 (its line names a new parent; nothing else changes).
    moved = [{**u, "parent": "jj"} if u["id"] == "nc-jx" else u for u in UNITS]
    assert await sync_ok(card_server, [*moved, *MEMBERS]) == report(
        N_UNITS + N_MEMBERS, units={"moved": 1}
    )
    units = await units_under(card_server, "jx")
    assert units["nc-jx"]["parent"] == "jj"
    assert units["nc-jx"]["path"] == "/jx/jj/nc-jx/"
    assert units["nc-jx-ml"]["path"] == "/jx/jj/nc-jx/nc-jx-ml/"
    assert units["nc-jx-ml"]["parent"] == "nc-jx"
    assert units["nc-jx-ml-v1"]["path"] == "/jx/jj/nc-jx/nc-jx-ml/nc-jx-ml-v1/"
    assert units["nc-xh-cq"]["path"] == "/jx/nc/nc-xh/nc-xh-cq/"  # the sibling stays
    assert set(await units_under(card_server, "nc")) == {
        "nc",
        "nc-xh",
        "nc-xh-office",
        "nc-xh-office-it",
        "nc-xh-cq",
        "nc-xh-cq-v1",
    }
    assert {"nc-jx", "nc-jx-ml", "nc-jx-ml-v1"} <= set(await units_under(card_server, "jj"))

    moved_people = {"jx-head", "ml-head", "ml-v1-sec"}
    jj_now = await member_ids(card_server, "jj", recursive=True)
    nc_now = await member_ids(card_server, "nc", recursive=True)
    assert moved_people <= jj_now
    assert not moved_people & nc_now
    assert jj_now == moved_people | {"jj-mayor", "ws-head", "sk-head", "sk-v1-sec", "dual"}
    # Their chain now runs through 九江.
    ml = await get_ok(card_server, "/admin/v1/users/ml-v1-sec")
    assert [c["id"] for c in ml["units"][0]["chain"]] == [
        "nc-jx-ml-v1",
        "nc-jx-ml",
        "nc-jx",
        "jj",
        "jx",
    ]
    assert ml["units"][0]["chain"][3]["leaders"] == ["jj-mayor"]
    # Sending the moved tree again is a no-op.
    assert await sync_ok(card_server, [*moved, *MEMBERS]) == report(N_UNITS + N_MEMBERS)


# -- 3. removal by absence ---------------------------------------------------------


async def test_full_sync_without_a_county_removes_it_and_its_people(
    card_server: Harness, connect: Connect
) -> None:
    await load_tree(card_server)
    # ws-head owns a group with people who stay and one who goes.
    ws_head = await connect("ws-head", reconnect=False)
    group = await ws_head.create_group("武宁防汛", ["dual", "xh-head", "sk-head"])
    conv = group["conv"]
    dual = await connect("dual")
    sk_head = await connect("sk-head", reconnect=False)
    sk_v1_raw = await card_server.raw()
    answer = await sk_v1_raw.request("auth", token=card_server.token("sk-v1-sec"))
    assert answer["type"] == "result", answer

    # 武宁县 and everything under it is gone; dual keeps only 长堎镇.
    gone_units = {"jj-ws", "jj-ws-sk", "jj-ws-sk-v1"}
    gone_people = {"ws-head", "sk-head", "sk-v1-sec"}
    units = [u for u in UNITS if u["id"] not in gone_units]
    members = [m for m in MEMBERS if m["user"] not in gone_people]
    members = [
        _m("dual", "挂职干部", ("nc-xh-cq", "驻镇干部", False)) if m["user"] == "dual" else m
        for m in members
    ]
    started = time.monotonic()
    result = await sync_ok(card_server, [*units, *members])
    assert result == report(
        len(units) + len(members),
        units={"removed": 3},
        members={"removed": 3},
        # dual's 宋溪镇 membership, and the three removed units' memberships.
        memberships={"removed": 4},
    )

    # Live connections of removed members are closed with 4012 (revoked), promptly.
    assert await sk_head.wait_closed(timeout=2) == 4012
    assert await ws_head.wait_closed(timeout=2) == 4012
    assert await sk_v1_raw.expect_close(timeout=2) == 4012
    assert time.monotonic() - started < 4  # sync answer + closes
    assert dual.connected  # still a member elsewhere: untouched

    # They can no longer authenticate.
    for user in sorted(gone_people):
        raw = await card_server.raw()
        refused = await raw.request("auth", token=card_server.token(user))
        assert (refused["type"], refused["code"]) == ("error", "token_invalid"), user
        assert await raw.expect_close(timeout=2) == 4002

    # The units and the people are gone from the directory.
    status, body = await api(card_server, "GET", "/admin/v1/units/jj-ws-sk")
    assert (status, body["error"]["code"]) == (404, "no_such_unit")
    assert set(await units_under(card_server, "jj")) == {"jj"}
    assert await member_ids(card_server, "jj", recursive=True) == {"jj-mayor"}
    assert not gone_people & await member_ids(card_server, "jx", recursive=True)
    for user in gone_people:
        status, body = await api(card_server, "GET", f"/admin/v1/users/{user}")
        assert (status, body["error"]["code"]) == (404, "no_such_user"), user
    dual_now = await get_ok(card_server, "/admin/v1/users/dual")
    assert [p["unit"]["id"] for p in dual_now["units"]] == ["nc-xh-cq"]

    # Out of the group, with a system message each; ownership passed on.
    async def group_settled() -> bool:
        members = (await dual.group_members(conv))["members"]
        return {m["user"] for m in members} == {"dual", "xh-head"}

    await wait_for(group_settled)
    assert (await dual.group_members(conv))["members"] == [
        {"user": "dual", "role": "owner"},
        {"user": "xh-head", "role": "member"},
    ]
    history = (await dual.history(conv))["messages"]
    removals = [m for m in history if m["body"].get("event") == "member_removed"]
    assert sorted(u for m in removals for u in m["body"]["users"]) == ["sk-head", "ws-head"]
    assert all(m["kind"] == "system" for m in removals)
    assert all(m["body"]["reason"] == "left_organisation" for m in removals)
    # dual can manage the group now (the owner role really passed).
    await dual.rename_group(conv, "武宁防汛（交接）")

    # And the same (smaller) sync again changes nothing.
    assert await sync_ok(card_server, [*units, *members]) == report(len(units) + len(members))


# -- 4. incremental sync and refused lines ---------------------------------------


async def test_incremental_removals(card_server: Harness) -> None:
    await load_tree(card_server)
    lines = [
        {"op": "remove_unit", "id": "nc-jx-ml"},  # and 民和村 below it
        {"op": "remove_member", "user": "ml-head"},
        {"op": "remove_member", "user": "cq-v1-clerk"},
        {"op": "unit", "id": "nc-jx", "name": "进贤县人民政府", "level": "county", "parent": "nc"},
        {"op": "unit", "id": "nc-jx-ly", "name": "李渡镇", "level": "township", "parent": "nc-jx"},
        _m("xh-clerk", "办公室科员", ("nc-xh-office", "副主任科员", False)),
    ]
    assert await sync_ok(card_server, lines, mode="incremental") == report(
        6,
        units={"created": 1, "updated": 1, "removed": 2},
        members={"updated": 1, "removed": 2},
        memberships={"removed": 3},
    )
    units = await units_under(card_server, "nc-jx")
    assert set(units) == {"nc-jx", "nc-jx-ly"}
    assert units["nc-jx"]["name"] == "进贤县人民政府"
    for user in ("ml-head", "cq-v1-clerk"):
        status, _ = await api(card_server, "GET", f"/admin/v1/users/{user}")
        assert status == 404, user
    # Incremental never removes by absence: ml-v1-sec lost their unit but is still a user.
    left = await get_ok(card_server, "/admin/v1/users/ml-v1-sec")
    assert left["units"] == []
    assert await member_ids(card_server, "nc-xh-cq-v1", recursive=False) == {"cq-v1-sec"}
    assert (await member_rows(card_server, "nc-xh-office", recursive=False))[0]["title"] == (
        "副主任科员"
    )
    # Repeating it: the removals and updates are already done.
    assert await sync_ok(card_server, lines, mode="incremental") == report(6)


async def test_sync_refuses_bad_lines_and_names_them(card_server: Harness) -> None:
    await load_tree(card_server)
    before = await units_under(card_server, "jx")

    # remove_* only in incremental syncs: a full sync removes by absence.
    await sync_error(card_server, [UNITS[0], {"op": "remove_unit", "id": "jj"}], "line[2].op")
    await sync_error(card_server, [UNITS[0], {"op": "remove_member", "user": "gov"}], "line[2].op")
    # An unknown parent names its line, and undoes the lines before it in the batch.
    await sync_error(
        card_server,
        [
            {"op": "unit", "id": "nc-new", "name": "新县", "level": "county", "parent": "nc"},
            {"op": "unit", "id": "orphan", "name": "孤儿", "level": "township", "parent": "ghost"},
        ],
        "line[2].parent",
        mode="incremental",
    )
    status, _ = await api(card_server, "GET", "/admin/v1/units/nc-new")
    assert status == 404
    # Levels go down the tree: no township in a village, no province below a city,
    # no administrative area inside a department.
    await sync_error(
        card_server,
        [
            {
                "op": "unit",
                "id": "bad-t",
                "name": "镇",
                "level": "township",
                "parent": "nc-xh-cq-v1",
            }
        ],
        "line[1].level",
        mode="incremental",
    )
    await sync_error(
        card_server,
        [{"op": "unit", "id": "bad-p", "name": "省", "level": "province", "parent": "nc"}],
        "line[1].level",
        mode="incremental",
    )
    await sync_error(
        card_server,
        [
            {
                "op": "unit",
                "id": "bad-v",
                "name": "村",
                "level": "village",
                "parent": "nc-xh-office",
            }
        ],
        "line[1].level",
        mode="incremental",
    )
    # A unit may not move into its own subtree (departments nest, so only the cycle stops it).
    await sync_error(
        card_server,
        [
            {
                "op": "unit",
                "id": "nc-xh-office",
                "name": "新建区政府办公室",
                "level": "department",
                "parent": "nc-xh-office-it",
            }
        ],
        "line[1].parent",
        mode="incremental",
    )
    await sync_error(
        card_server,
        [
            {
                "op": "unit",
                "id": "nc-xh-office",
                "name": "新建区政府办公室",
                "level": "department",
                "parent": "nc-xh-office",
            }
        ],
        "line[1].parent",
        mode="incremental",
    )
    # Members must name known units; lines must be JSON objects with a known op.
    await sync_error(
        card_server,
        [UNITS[0], _m("ghost-user", "幽灵", ("jx", "", False), ("nowhere", "", False))],
        "line[2].units[1].unit",
        mode="incremental",
    )
    await sync_error(card_server, b'{"op": "unit"', "line[1]", mode="incremental")
    await sync_error(card_server, ndjson(UNITS[:1]) + b"[1, 2]\n", "line[2].line", mode="full")
    await sync_error(card_server, [{"op": "rename"}], "line[1].op", mode="incremental")
    await sync_error(
        card_server, [{"op": "unit", "id": "a/b", "name": "x", "level": "city"}], "line[1].id"
    )
    await sync_error(card_server, [UNITS[0]], "mode", mode="bogus")

    # None of that changed anything (a refused full sync sweeps nothing).
    assert await units_under(card_server, "jx") == before
    assert await member_ids(card_server, "jx", recursive=True) == set(ALL_USERS)

    # A village directly under a city skips levels downwards: allowed.
    village = {"op": "unit", "id": "nc-v", "name": "城中村", "level": "village", "parent": "nc"}
    assert await sync_ok(card_server, [village], mode="incremental") == report(
        1, units={"created": 1}
    )
    assert (await units_under(card_server, "nc-v"))["nc-v"]["path"] == "/jx/nc/nc-v/"
    # So is a department of a department.
    dept = {
        "op": "unit",
        "id": "nc-xh-office-it-2",
        "name": "网络组",
        "level": "department",
        "parent": "nc-xh-office-it",
    }
    assert await sync_ok(card_server, [dept], mode="incremental") == report(1, units={"created": 1})


async def test_relevelling_a_unit_cannot_break_the_level_order(card_server: Harness) -> None:
    """The level order holds for a unit's children too, not only against its parent."""
    await load_tree(card_server)
    # 长堎镇 (with the village 长堎村 inside) re-labelled a village: a village in a village.
    await sync_error(
        card_server,
        [
            {
                "op": "unit",
                "id": "nc-xh-cq",
                "name": "长堎镇",
                "level": "village",
                "parent": "nc-xh",
            }
        ],
        "line[1].level",
        mode="incremental",
    )
    # 南昌 re-labelled a department: counties inside a department.
    await sync_error(
        card_server,
        [{"op": "unit", "id": "nc", "name": "南昌市", "level": "department", "parent": "jx"}],
        "line[1].level",
        mode="incremental",
    )
    units = await units_under(card_server, "jx")
    assert (units["nc-xh-cq"]["level"], units["nc"]["level"]) == ("township", "city")


# -- 5. a province-sized sync ------------------------------------------------------

BIG_MEMBERS = 100_000
BIG_CITIES = 10
BIG_COUNTIES_PER_CITY = 10


async def big_body() -> AsyncIterator[bytes]:
    """The NDJSON of a province with 100 counties and 100,000 members, made lazily."""
    lines = [{"op": "unit", "id": "p", "name": "省", "level": "province"}]
    for c in range(BIG_CITIES):
        lines.append(
            {"op": "unit", "id": f"c{c}", "name": f"市{c}", "level": "city", "parent": "p"}
        )
        for k in range(BIG_COUNTIES_PER_CITY):
            lines.append(
                {
                    "op": "unit",
                    "id": f"c{c}-k{k}",
                    "name": f"县{c}-{k}",
                    "level": "county",
                    "parent": f"c{c}",
                }
            )
    yield ndjson(lines)
    counties = BIG_CITIES * BIG_COUNTIES_PER_CITY
    buf: list[bytes] = []
    for i in range(BIG_MEMBERS):
        county = i % counties
        buf.append(
            orjson.dumps(
                {
                    "op": "member",
                    "user": f"u{i:06d}",
                    "name": f"干部{i}",
                    "units": [
                        {
                            "unit": f"c{county // BIG_COUNTIES_PER_CITY}"
                            f"-k{county % BIG_COUNTIES_PER_CITY}",
                            "title": "科员",
                            "leader": i < counties,
                        }
                    ],
                    "profile": {"phone": f"139{i:08d}"},
                }
            )
            + b"\n"
        )
        if len(buf) == 2000:
            yield b"".join(buf)
            buf = []
            await asyncio.sleep(0)
    if buf:
        yield b"".join(buf)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_hundred_thousand_members_in_one_streamed_sync(card_server: Harness) -> None:
    n_units = 1 + BIG_CITIES + BIG_CITIES * BIG_COUNTIES_PER_CITY
    started = time.monotonic()
    status, body = await api(
        card_server,
        "POST",
        "/admin/v1/directory/sync?mode=full",
        data=big_body(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    elapsed = time.monotonic() - started
    print(f"\n100k-member full sync: {elapsed:.1f} s")
    assert status == 200, body
    assert body == {
        "mode": "full",
        **report(
            n_units + BIG_MEMBERS,
            units={"created": n_units},
            members={"created": BIG_MEMBERS},
            memberships={"added": BIG_MEMBERS},
        ),
    }

    started = time.monotonic()
    rows = await member_rows(card_server, "p", recursive=True, limit=5000)
    print(f"paged through {len(rows)} members in {time.monotonic() - started:.1f} s")
    users = [r["user"] for r in rows]
    assert len(users) == BIG_MEMBERS
    assert users == [f"u{i:06d}" for i in range(BIG_MEMBERS)]  # by user id, none twice
    first_page = await get_ok(card_server, "/admin/v1/units/p/members?recursive=true&limit=5000")
    assert first_page["next_after"].split("|")[0] == "u004999"  # opaque "user|path" cursor
    # One county: a thousandth of the province, directly.
    assert len(await member_rows(card_server, "c3-k7", recursive=False)) == 1000
    assert await member_rows(card_server, "p", recursive=False) == []
    units = (await get_ok(card_server, "/admin/v1/units/p?depth=2"))["units"]
    assert len(units) == n_units


# -- 6. pushes addressed to units ---------------------------------------------------


async def notice_convs(server: Harness, app_id: str, users: Iterable[str]) -> dict[str, list[str]]:
    """For each user: the kinds of the messages in their notice conversation with ``app_id``."""
    out: dict[str, list[str]] = {}
    for user in users:
        conv = f"n:{app_id}:{user}"
        if await server.world.store.get_conversation(conv) is None:
            out[user] = []
            continue
        out[user] = [m.kind for m in await server.world.store.messages_after(conv, 0, 100)]
    return out


async def test_unit_targeted_cards_and_notices(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub, connect: Connect
) -> None:
    await load_tree(card_server)
    # A departed member of the county is not reached.
    await sync_ok(card_server, [{"op": "remove_member", "user": "cq-v1-clerk"}], "incremental")
    active_xh = XH_ALL - {"cq-v1-clerk"}
    watchers = {u: await connect(u) for u in ("xh-head", "cq-head", "cq-v1-sec", "jx-head")}

    pushed = await oa.request(
        "POST",
        "/api/v1/apps/cards",
        {
            "card": {"out_track_id": "flood-1", "title": "防汛值班通知", "body_md": "今晚值班"},
            "to": {"units": [{"id": "nc-xh", "recursive": True}]},
        },
    )
    assert pushed["holders"] == len(active_xh) == 7
    for user in ("xh-head", "cq-head", "cq-v1-sec"):
        ev = await watchers[user].next_event(
            "message", predicate=lambda e: e.data["kind"] == "card"
        )
        assert ev.data["conv"] == f"n:oa:{user}"
        assert ev.data["body"]["card"]["title"] == "防汛值班通知"
    kinds = await notice_convs(card_server, "oa", ALL_USERS)
    assert {u for u, k in kinds.items() if k == ["card"]} == active_xh
    assert {u for u, k in kinds.items() if k} == active_xh

    # Not recursive: only the county's own members.
    sent = await oa.request(
        "POST",
        "/api/v1/apps/notices",
        {
            "title": "区长办公会",
            "text": "明天 9:00",
            "to": {"units": [{"id": "nc-xh", "recursive": False}]},
        },
    )
    assert sent["recipients"] == len(XH_DIRECT)
    ev = await watchers["xh-head"].next_event(
        "message", predicate=lambda e: e.data["kind"] == "notice"
    )
    assert ev.data["body"]["title"] == "区长办公会"
    kinds = await notice_convs(card_server, "oa", ALL_USERS)
    assert {u for u, k in kinds.items() if "notice" in k} == XH_DIRECT
    # A unit plus users: each person once.
    sent = await oa.request(
        "POST",
        "/api/v1/apps/notices",
        {
            "title": "村务",
            "text": "村务公开",
            "to": {"users": ["cq-v1-sec", "gov"], "units": [{"id": "nc-xh-cq-v1"}]},
        },
    )
    assert sent["recipients"] == 2
    # jx-head (another county) got nothing at all.
    await asyncio.sleep(0.2)
    assert not [c for c in watchers["jx-head"].conversations() if c.startswith("n:")]
    assert (await notice_convs(card_server, "oa", ["jx-head"]))["jx-head"] == []

    # An app whose scope is 南昌's subtree reaches 新建区 but not 武宁县.
    await register_app(card_server.world.http_url, stub, scope=["unit:nc"], app_id="nc-app")
    async with BusinessClient(card_server.world.http_url, "nc-app", stub.secret) as nc_app:
        ok = await nc_app.request(
            "POST",
            "/api/v1/apps/notices",
            {"title": "通知", "text": "南昌", "to": {"units": [{"id": "nc-xh-cq"}]}},
        )
        assert ok["recipients"] == 3  # cq-head, dual, cq-v1-sec; not the departed clerk
        with pytest.raises(BusinessError) as info:
            await nc_app.request(
                "POST",
                "/api/v1/apps/notices",
                {"title": "通知", "text": "九江", "to": {"units": [{"id": "jj-ws"}]}},
            )
        assert (info.value.status, info.value.code) == (403, "out_of_scope")
        assert info.value.body["details"]["outside"] == ["unit:jj-ws"]
        with pytest.raises(BusinessError) as info:
            await nc_app.request(
                "POST",
                "/api/v1/apps/cards",
                {
                    "card": {"out_track_id": "jj-1", "title": "九江"},
                    "to": {"units": [{"id": "jx", "recursive": False}]},
                },
            )
        assert (info.value.status, info.value.code) == (403, "out_of_scope")
        assert (await notice_convs(card_server, "nc-app", ["ws-head", "gov"])) == {
            "ws-head": [],
            "gov": [],
        }

    with pytest.raises(BusinessError) as info:
        await oa.request(
            "POST",
            "/api/v1/apps/notices",
            {"title": "通知", "text": "?", "to": {"units": [{"id": "no-such-county"}]}},
        )
    assert (info.value.status, info.value.code) == (404, "no_such_unit")
    with pytest.raises(BusinessError) as info:
        await oa.request(
            "POST",
            "/api/v1/apps/notices",
            {"title": "通知", "text": "?", "to": {"units": [{"id": "nc-xh", "recursive": 1}]}},
        )
    assert (info.value.status, info.value.field) == (400, "to.units[0].recursive")


# -- 7. scoped administrators --------------------------------------------------------


async def test_scoped_admins(card_server: Harness) -> None:
    await load_tree(card_server)
    grant = {"user": "xh-admin", "unit": "nc-xh"}
    status, body = await api(card_server, "POST", "/admin/v1/admins", json=grant)
    assert (status, body) == (201, {"user": "xh-admin", "unit": "nc-xh", "granted": True})
    xh = card_server.token("xh-admin")

    assert await get_ok(card_server, "/admin/v1/whoami") == {
        "super": True,
        "user": None,
        "scopes": [],
    }
    assert await get_ok(card_server, "/admin/v1/whoami", xh) == {
        "super": False,
        "user": "xh-admin",
        "scopes": [{"id": "nc-xh", "name": "新建区", "path": "/jx/nc/nc-xh/"}],
    }
    # Inside the scope: the county and anything under it.
    sub = (await get_ok(card_server, "/admin/v1/units/nc-xh?depth=3", xh))["units"]
    assert {u["id"] for u in sub} == {
        "nc-xh",
        "nc-xh-office",
        "nc-xh-office-it",
        "nc-xh-cq",
        "nc-xh-cq-v1",
    }
    await get_ok(card_server, "/admin/v1/units/nc-xh-cq-v1", xh)
    rows = await member_rows(card_server, "nc-xh", recursive=True, token=xh)
    assert {r["user"] for r in rows} == XH_ALL
    assert (await get_ok(card_server, "/admin/v1/users/cq-v1-sec", xh))["user"] == "cq-v1-sec"
    # A scoped admin sees sensitive profile fields masked, the others as they are.
    head = await get_ok(card_server, "/admin/v1/users/xh-head", xh)
    assert head["profile"] == {
        "phone": "139****5678",
        "id_number": "360122********567X",
        "email": "xh-head@xinjian.gov.cn",
    }

    # Outside it: the sibling county, the city above, their members and people.
    for path in (
        "/admin/v1/units/nc-jx",
        "/admin/v1/units/nc",
        "/admin/v1/units/jx",
        "/admin/v1/units/nc-jx/members",
        "/admin/v1/units/nc-jx-ml/members?recursive=true",
    ):
        status, body = await api(card_server, "GET", path, token=xh)
        assert (status, body["error"]["code"]) == (403, "forbidden"), path
    for user in ("ml-head", "jx-head", "gov"):
        status, body = await api(card_server, "GET", f"/admin/v1/users/{user}", token=xh)
        assert (status, body["error"]["code"]) == (404, "no_such_user"), user
    # A scoped admin cannot run the HR sync.
    status, body = await api(
        card_server,
        "POST",
        "/admin/v1/directory/sync?mode=incremental",
        token=xh,
        data=ndjson([{"op": "remove_member", "user": "gov"}]),
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    assert (await get_ok(card_server, "/admin/v1/users/gov"))["user"] == "gov"

    # Delegation inside the subtree only.
    status, body = await api(
        card_server,
        "POST",
        "/admin/v1/admins",
        token=xh,
        json={"user": "cq-head", "unit": "nc-xh-cq"},
    )
    assert (status, body["granted"]) == (201, True)
    assert (await get_ok(card_server, "/admin/v1/whoami", card_server.token("cq-head")))[
        "scopes"
    ] == [{"id": "nc-xh-cq", "name": "长堎镇", "path": "/jx/nc/nc-xh/nc-xh-cq/"}]
    status, body = await api(
        card_server, "POST", "/admin/v1/admins", token=xh, json={"user": "ml-head", "unit": "nc-jx"}
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await api(
        card_server, "POST", "/admin/v1/admins", token=xh, json={"user": "xh-admin", "unit": "nc"}
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")  # no widening one's own scope
    status, body = await api(
        card_server, "GET", "/admin/v1/whoami", token=card_server.token("ml-head")
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")

    # People without a grant, and callers without credentials.
    status, body = await api(
        card_server, "GET", "/admin/v1/whoami", token=card_server.token("jx-head")
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    assert body["error"]["message"] == "you are not an administrator"
    status, body = await api(card_server, "GET", "/admin/v1/units/nc-xh", token=None)
    assert (status, body["error"]["code"]) == (401, "not_authenticated")
    status, body = await api(card_server, "GET", "/admin/v1/units/nc-xh", token="garbage")
    assert (status, body["error"]["code"]) == (401, "token_invalid")
    status, body = await api(
        card_server,
        "GET",
        "/admin/v1/units/nc-xh",
        headers={"Authorization": "Basic eGg6eGg="},
        token=None,
    )
    assert (status, body["error"]["code"]) == (401, "not_authenticated")

    # Revoking the grant ends it at once.
    status, body = await api(card_server, "DELETE", "/admin/v1/admins", json=grant)
    assert (status, body) == (200, {"user": "xh-admin", "unit": "nc-xh", "revoked": True})
    for path in ("/admin/v1/whoami", "/admin/v1/units/nc-xh"):
        status, body = await api(card_server, "GET", path, token=xh)
        assert (status, body["error"]["code"]) == (403, "forbidden"), path
    status, body = await api(card_server, "DELETE", "/admin/v1/admins", json=grant)
    assert (status, body["revoked"]) == (200, False)
    # The grant xh-admin made stays (it was made while they held the scope).
    await get_ok(card_server, "/admin/v1/units/nc-xh-cq", card_server.token("cq-head"))
