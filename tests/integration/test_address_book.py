"""The address book (通讯录) for ordinary users, end to end (issue #12 item 12).

The five-level tree of ``test_directory`` is loaded through the real admin
sync; ordinary users then look people up, browse units, search by name and
pinyin, page, and keep a local copy current with ``directory.changes`` and
the pushed ``directory`` event -- over real sockets, in both codecs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from imserver.directory.pinyin import name_keys
from imserver.directory.search_rank import Tier
from imserver.store.people_search import tier_sql
from imserver.store.sqlite.schema import MIGRATIONS, migrate
from imserver_sdk import Client, ServerError
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS
from tests.integration.test_directory import MEMBERS, UNITS, _m, api, sync_ok
from tests.support import Harness, RawClient

RawAs = Callable[..., Awaitable[RawClient]]
StartServer = Callable[..., Awaitable[Harness]]

#: People whose names exercise the search tiers (added to the tree by ``load``).
SEARCHABLE: list[dict[str, Any]] = [
    _m("zs1", "张三", ("nc-xh-cq-v1", "村委委员", False), phone="13700000001"),
    _m("zs2", "张三丰", ("jj-ws-sk-v1", "村委委员", False)),
    _m("zs3", "赵四", ("nc-xh", "科员", False)),
    _m("zs4", "王张三", ("nc-jx", "科员", False)),
    _m("zs5", "张珊", ("nc-xh-office", "科员", False)),
]
EVERYONE = {m["user"] for m in [*MEMBERS, *SEARCHABLE]}


async def load(server: Harness) -> None:
    await sync_ok(server, [*UNITS, *MEMBERS, *SEARCHABLE])


@pytest.fixture
async def raw_as(card_server: Harness) -> AsyncIterator[RawAs]:
    """Raw authenticated sockets for synced users (without renaming them, as
    ``Harness.raw`` would)."""
    opened: list[RawClient] = []

    async def make(user: str, codec: str = "json") -> RawClient:
        ws = await connect(
            card_server.url,
            subprotocols=[f"imserver.v1.{codec}"],  # type: ignore[list-item]
            compression=None,
        )
        raw = RawClient(ws, codec)
        opened.append(raw)
        answer = await raw.request("auth", token=card_server.token(user))
        assert answer["type"] == "result", answer
        return raw

    yield make
    for raw in opened:
        await raw.close()


async def ok(raw: RawClient, type_: str, **fields: Any) -> dict[str, Any]:
    answer = await raw.request(type_, **fields)
    assert answer["type"] == "result", answer
    data: dict[str, Any] = answer["data"]
    return data


async def error(raw: RawClient, type_: str, **fields: Any) -> dict[str, Any]:
    answer = await raw.request(type_, **fields)
    assert answer["type"] == "error", answer
    return answer


def ids(people: list[dict[str, Any]]) -> list[str]:
    return [p["user"] for p in people]


# -- lookup and what a user may see ---------------------------------------------


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_lookup_by_id_masks_pii_unless_pii_read(
    card_server: Harness, raw_as: RawAs, codec: str
) -> None:
    await load(card_server)
    clerk = await raw_as("xh-clerk", codec)
    found = await ok(clerk, "directory.users", users=["gov", "dual", "nobody", "gov"])
    assert found["missing"] == ["nobody"]
    gov, dual = found["users"]
    assert gov == {
        "user": "gov",
        "name": "省长",
        "units": [{"id": "jx", "name": "江西省", "title": "省长", "leader": True}],
        "profile": {
            "email": "gov@jx.gov.cn",
            "id_number": "360102********1234",
            "office_phone": "0791-88912345",
            "phone": "138****1234",
        },
    }
    # Both of a person's units, in tree order, across two cities.
    assert dual["units"] == [
        {"id": "jj-ws-sk", "name": "宋溪镇", "title": "挂职副镇长", "leader": False},
        {"id": "nc-xh-cq", "name": "长堎镇", "title": "驻镇干部", "leader": False},
    ]

    # One's own entry is never masked.
    me = await raw_as("gov", codec)
    (own,) = (await ok(me, "directory.users", users=["gov"]))["users"]
    assert own["profile"]["phone"] == "13812341234"

    # pii:read (granted by an admin) shows the clear values.
    status, _ = await api(
        card_server, "POST", "/admin/v1/scopes", json={"user": "xh-clerk", "scope": "pii:read"}
    )
    assert status == 200
    (gov,) = (await ok(clerk, "directory.users", users=["gov"]))["users"]
    assert gov["profile"]["phone"] == "13812341234"
    assert gov["profile"]["id_number"] == "360102197001011234"


async def test_removed_people_are_missing(card_server: Harness, raw_as: RawAs) -> None:
    await load(card_server)
    clerk = await raw_as("xh-clerk")
    await sync_ok(card_server, [{"op": "remove_member", "user": "zs3"}], mode="incremental")
    found = await ok(clerk, "directory.users", users=["zs3", "zs1"])
    assert (ids(found["users"]), found["missing"]) == (["zs1"], ["zs3"])
    assert "zs3" not in ids((await ok(clerk, "directory.search", q="zs"))["members"])


# -- browsing ---------------------------------------------------------------------


async def test_browse_a_unit_its_sub_units_and_people(card_server: Harness, raw_as: RawAs) -> None:
    await load(card_server)
    clerk = await raw_as("cq-v1-clerk", "msgpack")
    page = await ok(clerk, "directory.unit", unit="nc-xh")
    assert page["unit"] == {
        "id": "nc-xh",
        "parent": "nc",
        "name": "新建区",
        "level": "county",
        "path": "/jx/nc/nc-xh/",
        "sort": 0,
    }
    assert page["ancestors"] == [{"id": "jx", "name": "江西省"}, {"id": "nc", "name": "南昌市"}]
    # Direct sub-units with the number of people anywhere below them.
    assert [(c["id"], c["members"]) for c in page["children"]] == [
        ("nc-xh-cq", 5),  # cq-head, dual, cq-v1-sec, cq-v1-clerk, zs1
        ("nc-xh-office", 4),  # xh-clerk, xh-office-dir, zs5, xh-admin (信息科)
    ]
    assert ids(page["members"]) == ["xh-head", "xh-office-dir", "zs3"]  # direct only
    assert page["cursor"] is None
    village = await ok(clerk, "directory.unit", unit="nc-xh-cq-v1")
    assert village["children"] == []
    assert [m["units"][0]["title"] for m in village["members"]] == ["文书", "村支书", "村委委员"]


async def test_recursive_listing_pages_without_repeats(card_server: Harness, raw_as: RawAs) -> None:
    await load(card_server)
    clerk = await raw_as("xh-clerk")
    everyone_below = {
        *("xh-head", "xh-clerk", "xh-office-dir", "xh-admin", "cq-head", "cq-v1-sec"),
        *("cq-v1-clerk", "dual", "zs1", "zs3", "zs5"),
    }
    seen: list[str] = []
    page = await ok(clerk, "directory.unit", unit="nc-xh", recursive=True, limit=2)
    while True:
        assert len(page["members"]) <= 2
        seen.extend(ids(page["members"]))
        if page["cursor"] is None:
            break
        page = await ok(
            clerk, "directory.unit", unit="nc-xh", recursive=True, limit=2, cursor=page["cursor"]
        )
        assert "children" not in page  # sub-units come with the first page only
    # xh-office-dir sits in two units below nc-xh and still comes once.
    assert seen == sorted(everyone_below)
    whole = await ok(clerk, "directory.unit", unit="jx", recursive=True, limit=500)
    assert set(ids(whole["members"])) == EVERYONE


# -- search -------------------------------------------------------------------------


async def test_search_by_name_and_pinyin_ranked(card_server: Harness, raw_as: RawAs) -> None:
    await load(card_server)
    clerk = await raw_as("ml-v1-sec")

    async def search(q: str, **fields: Any) -> list[str]:
        return ids((await ok(clerk, "directory.search", q=q, **fields))["members"])

    # Exact name, then names starting with it, then names containing it.
    assert await search("张三") == ["zs1", "zs2", "zs4"]
    # Initials: exact (by id), then longer initials.
    assert await search("zs") == ["zs1", "zs3", "zs5", "zs2"]
    assert await search("ZS") == ["zs1", "zs3", "zs5", "zs2"]
    # Full pinyin from the start, in pinyin order; spaces are ignored.
    assert await search("zhangs") == ["zs1", "zs2", "zs5"]
    assert await search("zhang san") == ["zs1", "zs2"]
    # Only people with a unit in the subtree.
    assert await search("zs", unit="nc-xh") == ["zs1", "zs3", "zs5"]
    assert await search("zs", unit="nc-xh-cq-v1") == ["zs1"]
    # Names containing it, in pinyin order: 民和 min.., 宋溪 song.., 长堎 zhang..
    assert await search("镇长") == ["ml-head", "sk-head", "cq-head"]
    assert await search("不存在的人") == []
    # Results are address-book entries, masked as everywhere.
    (zs1,) = (await ok(clerk, "directory.search", q="张三", limit=1))["members"]
    assert zs1["profile"] == {"phone": "137****0001"}


async def test_search_pages_follow_the_ranking(card_server: Harness, raw_as: RawAs) -> None:
    await load(card_server)
    clerk = await raw_as("ml-v1-sec")
    for q in ("zs", "张", "z"):
        whole = ids((await ok(clerk, "directory.search", q=q, limit=100))["members"])
        paged: list[str] = []
        page = await ok(clerk, "directory.search", q=q, limit=1)
        while True:
            paged.extend(ids(page["members"]))
            if page["cursor"] is None:
                break
            page = await ok(clerk, "directory.search", q=q, limit=1, cursor=page["cursor"])
        assert paged == whole, q
        assert len(set(paged)) == len(paged), q
    assert len(whole) > 5  # "z": every 张, 赵, 镇, 长 (zhang) ... once each


# -- keeping a local copy ---------------------------------------------------------------


async def changes_from(raw: RawClient, since: int, limit: int = 1000) -> dict[str, Any]:
    """Every change after ``since``, following ``more`` page by page, merged."""
    merged: dict[str, Any] = {"units": {}, "members": {}, "removed_units": set()}
    merged["removed_members"] = set()
    while True:
        page = await ok(raw, "directory.changes", since=since, limit=limit)
        for u in page["units"]:
            merged["units"][u["id"]] = u
            merged["removed_units"].discard(u["id"])
        for m in page["members"]:
            merged["members"][m["user"]] = m
            merged["removed_members"].discard(m["user"])
        for u in page["removed_units"]:
            merged["units"].pop(u, None)
            merged["removed_units"].add(u)
        for m in page["removed_members"]:
            merged["members"].pop(m, None)
            merged["removed_members"].add(m)
        assert page["cursor"] >= since
        since = page["cursor"]
        if not page["more"]:
            merged["cursor"] = since
            return merged


async def directory_events(raw: RawClient) -> list[dict[str, Any]]:
    """``directory`` events received so far (a ping round trip flushes the socket)."""
    assert (await raw.request("ping"))["type"] == "pong"
    events = [f for f in raw.backlog if f.get("event") == "directory"]
    raw.backlog.clear()
    return events


async def test_changes_and_the_directory_event_keep_a_copy_current(
    card_server: Harness, raw_as: RawAs
) -> None:
    await load(card_server)
    watcher = await raw_as("gov", "msgpack")
    copy = await changes_from(watcher, 0, limit=7)  # everything, in pages of 7
    assert set(copy["units"]) == {u["id"] for u in UNITS}
    assert set(copy["members"]) == EVERYONE
    assert copy["members"]["gov"]["profile"]["phone"] == "13812341234"  # gov's own entry
    assert copy["members"]["zs1"]["profile"]["phone"] == "137****0001"
    cursor = copy["cursor"]

    await sync_ok(
        card_server,
        [
            {"op": "unit", "id": "nc-jx-ml", "name": "民和镇（新）", "level": "township",
             "parent": "nc-jx"},
            _m("ml-head", "民和镇长", ("nc-jx-ml", "党委书记", True)),
            _m("new", "新同志", ("nc-jx-ml-v1", "文书", False)),
            {"op": "remove_member", "user": "ml-v1-sec"},
        ],
        mode="incremental",
    )  # fmt: skip
    (event,) = await directory_events(watcher)  # one event for the whole sync
    assert event["data"]["cursor"] > cursor

    delta = await changes_from(watcher, cursor)
    assert delta["cursor"] == event["data"]["cursor"]
    assert set(delta["units"]) == {"nc-jx-ml"}
    assert delta["units"]["nc-jx-ml"]["name"] == "民和镇（新）"
    assert set(delta["members"]) == {"ml-head", "new"}
    assert delta["members"]["ml-head"]["units"][0]["title"] == "党委书记"
    assert delta["removed_members"] == {"ml-v1-sec"}

    # The same sync again changes nothing: no event, no changes.
    await sync_ok(card_server, [_m("new", "新同志", ("nc-jx-ml-v1", "文书", False))], "incremental")
    assert await directory_events(watcher) == []
    idle = await ok(watcher, "directory.changes", since=delta["cursor"])
    assert (idle["units"], idle["members"], idle["cursor"], idle["more"]) == (
        [],
        [],
        delta["cursor"],
        False,
    )

    # A full sync of the original tree without 九江 (jj): its units and its people go.
    kept_units = [u for u in UNITS if not u["id"].startswith("jj")]
    kept_people = [
        {**m, "units": [u for u in m["units"] if not u["unit"].startswith("jj")]}
        for m in [*MEMBERS, *SEARCHABLE]
        if m["user"] not in ("jj-mayor", "ws-head", "sk-head", "sk-v1-sec", "zs2")
    ]
    await sync_ok(card_server, [*kept_units, *kept_people])
    (event,) = await directory_events(watcher)
    gone = await changes_from(watcher, delta["cursor"])
    assert gone["removed_units"] == {"jj", "jj-ws", "jj-ws-sk", "jj-ws-sk-v1"}
    assert set(gone["units"]) == {"nc-jx-ml"}  # its old name back
    # "new" was not in the full sync either; ml-v1-sec is back; dual lost a unit.
    assert gone["removed_members"] == {"jj-mayor", "ws-head", "sk-head", "sk-v1-sec", "zs2", "new"}
    assert set(gone["members"]) == {"dual", "ml-head", "ml-v1-sec"}
    assert [u["id"] for u in gone["members"]["dual"]["units"]] == ["nc-xh-cq"]
    assert gone["cursor"] == event["data"]["cursor"]


async def test_a_moved_unit_reports_its_whole_subtree(card_server: Harness, raw_as: RawAs) -> None:
    await load(card_server)
    watcher = await raw_as("gov")
    cursor = (await changes_from(watcher, 0))["cursor"]
    # 长堎镇 (and its village) moves from 新建区 to 进贤县.
    await sync_ok(
        card_server,
        [{"op": "unit", "id": "nc-xh-cq", "name": "长堎镇", "level": "township",
          "parent": "nc-jx"}],
        mode="incremental",
    )  # fmt: skip
    delta = await changes_from(watcher, cursor)
    assert {u: v["path"] for u, v in delta["units"].items()} == {
        "nc-xh-cq": "/jx/nc/nc-jx/nc-xh-cq/",
        "nc-xh-cq-v1": "/jx/nc/nc-jx/nc-xh-cq/nc-xh-cq-v1/",
    }
    assert delta["members"] == {}


# -- bad input ------------------------------------------------------------------------


async def test_bad_requests_get_stable_errors_and_change_nothing(
    card_server: Harness, raw_as: RawAs
) -> None:
    await load(card_server)
    raw = await raw_as("xh-clerk")
    unit_page = await ok(raw, "directory.unit", unit="jx", recursive=True, limit=1)
    search_page = await ok(raw, "directory.search", q="zs", limit=1)
    newest = (await ok(raw, "directory.changes", since=0, limit=1000))["cursor"]
    cases: list[tuple[str, dict[str, Any], str, str | None]] = [
        ("directory.users", {}, "invalid_field", "users"),
        ("directory.users", {"users": []}, "invalid_field", "users"),
        ("directory.users", {"users": "gov"}, "invalid_field", "users"),
        ("directory.users", {"users": [f"u{i}" for i in range(201)]}, "invalid_field", "users"),
        ("directory.users", {"users": ["gov", "no such/id"]}, "invalid_field", "users[1]"),
        ("directory.unit", {}, "invalid_field", "unit"),
        ("directory.unit", {"unit": "nowhere"}, "no_such_unit", None),
        ("directory.unit", {"unit": "../etc"}, "invalid_field", "unit"),
        ("directory.unit", {"unit": "jx", "limit": 0}, "invalid_field", "limit"),
        ("directory.unit", {"unit": "jx", "limit": 501}, "invalid_field", "limit"),
        ("directory.unit", {"unit": "jx", "recursive": "yes"}, "invalid_field", "recursive"),
        ("directory.unit", {"unit": "jx", "cursor": "garbage!"}, "invalid_field", "cursor"),
        # A cursor from another listing (here: not recursive, another unit, a search).
        ("directory.unit", {"unit": "jx", "cursor": unit_page["cursor"]}, "invalid_field",
         "cursor"),
        ("directory.unit", {"unit": "nc", "recursive": True, "cursor": unit_page["cursor"]},
         "invalid_field", "cursor"),
        ("directory.unit", {"unit": "jx", "cursor": search_page["cursor"]}, "invalid_field",
         "cursor"),
        ("directory.search", {}, "invalid_field", "q"),
        ("directory.search", {"q": "   "}, "invalid_field", "q"),
        ("directory.search", {"q": "x" * 65}, "invalid_field", "q"),
        ("directory.search", {"q": 5}, "invalid_field", "q"),
        ("directory.search", {"q": "zs", "limit": 101}, "invalid_field", "limit"),
        ("directory.search", {"q": "zs", "unit": "nowhere"}, "no_such_unit", None),
        ("directory.search", {"q": "zs", "cursor": unit_page["cursor"]}, "invalid_field",
         "cursor"),
        # A search cursor continues only its own search (same q, same unit).
        ("directory.search", {"q": "zh", "cursor": search_page["cursor"]}, "invalid_field",
         "cursor"),
        ("directory.search", {"q": "zs", "unit": "jx", "cursor": search_page["cursor"]},
         "invalid_field", "cursor"),
        ("directory.changes", {"since": -1}, "invalid_field", "since"),
        ("directory.changes", {"since": "0"}, "invalid_field", "since"),
        ("directory.changes", {"since": newest + 1}, "invalid_field", "since"),
        ("directory.changes", {"limit": 1001}, "invalid_field", "limit"),
    ]  # fmt: skip
    for type_, fields, code, field in cases:
        err = await error(raw, type_, **fields)
        assert (err["code"], err.get("field")) == (code, field), (type_, fields, err)
        assert err["message"]
    # The connection is still fine and nothing changed.
    assert (await ok(raw, "directory.changes", since=0, limit=1000))["cursor"] == newest


# -- SDK ------------------------------------------------------------------------------------


async def test_sdk_address_book(card_server: Harness) -> None:
    await load(card_server)
    async with Client(card_server.url, card_server.token("xh-clerk")) as client:
        found = await client.users(["zs1", "nobody"])
        assert (ids(found["users"]), found["missing"]) == (["zs1"], ["nobody"])
        page = await client.unit("nc-xh-office", recursive=True, limit=2)
        rest = await client.unit("nc-xh-office", recursive=True, limit=2, cursor=page["cursor"])
        assert ids(page["members"]) + ids(rest["members"]) == [
            "xh-admin",
            "xh-clerk",
            "xh-office-dir",
            "zs5",
        ]
        assert ids((await client.search("zs", unit="nc-xh"))["members"]) == ["zs1", "zs3", "zs5"]
        everything = await client.directory_changes(0)
        assert not everything["more"]
        with pytest.raises(ServerError) as caught:
            await client.search(" ")
        assert caught.value.code == "invalid_field"

        await sync_ok(card_server, [_m("zs6", "张六", ("nc-xh", "科员", False))], "incremental")
        event = await client.next_event("directory")
        delta = await client.directory_changes(everything["cursor"])
        assert delta["cursor"] == event.data["cursor"]
        assert ids(delta["members"]) == ["zs6"]
        assert ids((await client.search("张六"))["members"]) == ["zs6"]


# -- upgrading a store from before the address book ------------------------------------------


def test_migration_seeds_the_change_log_and_head_counts(tmp_path: Any) -> None:
    """A store synced before migration 8 must not hide its people from ``since: 0``."""
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
        " description TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    for version, description, sql in MIGRATIONS:
        if version >= 8:
            break
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, description))
    conn.executemany(
        "INSERT INTO units (id, parent, name, level, path, sync_gen, updated_at)"
        " VALUES (?, ?, ?, ?, ?, 1, 0)",
        [("jx", None, "江西省", "province", "/jx/"), ("nc", "jx", "南昌市", "city", "/jx/nc/")],
    )
    conn.executemany(
        "INSERT INTO users (id, name, created_at, sync_gen, disabled) VALUES (?, ?, 0, ?, ?)",
        [
            ("gov", "省长", 1, 0),
            ("mayor", "市长", 1, 0),
            ("gone", "离职", 1, 1),
            ("bot", "b", 0, 0),
        ],
    )
    conn.executemany(
        "INSERT INTO unit_members (unit, user) VALUES (?, ?)",
        [("jx", "gov"), ("nc", "mayor"), ("jx", "mayor")],
    )
    assert migrate(conn) == [v for v, _, _ in MIGRATIONS if v >= 8]
    changes = conn.execute("SELECT kind, id, seq FROM directory_changes ORDER BY seq").fetchall()
    assert changes == [
        ("unit", "jx", 1),
        ("unit", "nc", 2),
        ("member", "gone", 3),  # removed before: clients learn it as a removal
        ("member", "gov", 4),
        ("member", "mayor", 5),
    ]
    assert conn.execute(
        "SELECT value FROM counters WHERE name = 'directory_change'"
    ).fetchone() == (5,)
    counts = dict(conn.execute("SELECT id, members FROM units").fetchall())
    assert counts == {"jx": 2, "nc": 1}  # mayor counted once in 江西省


# -- every address-book query is an index range -------------------------------------------------


async def test_search_tiers_and_change_log_read_indexes_not_tables(
    start_server: StartServer,
) -> None:
    """No tier may scan every person: each starts from an index (SQLite's EXPLAIN QUERY PLAN,
    so this server is on SQLite whatever ``IM_TEST_STORE`` says)."""
    card_server = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS, store={"backend": "sqlite"}
    )
    await load(card_server)
    conn = sqlite3.connect(card_server.world.config.sqlite_file)
    params = {"q": "张", "q_end": "张\U0010ffff", "k": "z", "k_end": "z{", "ch": "张"}
    params |= {"p": "/jx/", "p_end": "/jx/\x7f", "after_key": "", "after_user": ""}
    try:
        for tier in Tier:
            found = tier_sql(tier, has_key=True)
            assert found is not None
            rows_from, cond, col = found
            sql = (
                f"SELECT {col}, u.id FROM {rows_from} WHERE {cond} AND u.disabled = 0"
                " AND EXISTS (SELECT 1 FROM unit_members m JOIN units un ON un.id = m.unit"
                " WHERE m.user = u.id AND un.path >= :p AND un.path < :p_end)"
                f" AND ({col}, u.id) > (:after_key, :after_user) ORDER BY {col}, u.id LIMIT 21"
            )
            plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert plan[0].startswith("SEARCH"), (tier, plan)  # an index range, not SCAN
        plan = [
            r[3]
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT kind, id, seq FROM directory_changes"
                " WHERE seq > 0 ORDER BY seq LIMIT 10"
            )
        ]
        assert plan == [
            "SEARCH directory_changes USING COVERING INDEX directory_changes_by_seq (seq>?)"
        ]
    finally:
        conn.close()


# -- a province-sized address book ----------------------------------------------------------------

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐"
    "许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
)
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华玉萍红娥建国文辉力志永健世"
BIG = 100_000


def big_name(i: int) -> str:
    """A plausible, deterministic name: surname and one or two given characters."""
    given = GIVEN[i * 7 % len(GIVEN)] + (GIVEN[i * 13 % len(GIVEN)] if i % 3 else "")
    return SURNAMES[i * 31 % len(SURNAMES)] + given


async def big_province() -> AsyncIterator[bytes]:
    lines: list[dict[str, Any]] = [{"op": "unit", "id": "p", "name": "省", "level": "province"}]
    for c in range(10):
        lines.append(
            {"op": "unit", "id": f"c{c}", "name": f"市{c}", "level": "city", "parent": "p"}
        )
        lines += [
            {
                "op": "unit",
                "id": f"c{c}-k{k}",
                "name": f"县{k}",
                "level": "county",
                "parent": f"c{c}",
            }
            for k in range(10)
        ]
    yield b"".join(orjson.dumps(line) + b"\n" for line in lines)
    for start in range(0, BIG, 5000):
        yield b"".join(
            orjson.dumps(
                {
                    "op": "member",
                    "user": f"u{i:06d}",
                    "name": big_name(i),
                    "units": [{"unit": f"c{i % 100 // 10}-k{i % 10}", "title": "科员"}],
                    "profile": {"phone": f"139{i:08d}"},
                }
            )
            + b"\n"
            for i in range(start, start + 5000)
        )


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_hundred_thousand_people_searched_and_browsed(
    card_server: Harness, raw_as: RawAs
) -> None:
    """Correct answers over 100,000 people; the timings are printed, not asserted."""
    started = time.monotonic()
    status, body = await api(
        card_server,
        "POST",
        "/admin/v1/directory/sync?mode=full",
        data=big_province(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 200, body
    print(f"\n100k-person full sync: {time.monotonic() - started:.1f} s")
    raw = await raw_as("u000001")

    async def timed(label: str, type_: str, **fields: Any) -> dict[str, Any]:
        """The answer; prints the first (cold) and the best of three round trips."""
        times: list[float] = []
        for _ in range(3):
            started = time.monotonic()
            data = await ok(raw, type_, **fields)
            times.append(1000 * (time.monotonic() - started))
        print(f"{label:40s} first {times[0]:6.1f} ms, best {min(times):6.1f} ms")
        return data

    target = big_name(4242)
    hits = (await timed(f"search {target}", "directory.search", q=target))["members"]
    assert hits[0]["name"] == target and all(target in h["name"] for h in hits)
    contains = (await timed("search 伟 (contains)", "directory.search", q="伟"))["members"]
    assert len(contains) == 20 and all("伟" in h["name"] for h in contains)
    initials = (await timed("search wj (initials)", "directory.search", q="wj"))["members"]
    assert len(initials) == 20 and all(name_keys(h["name"]).initials == "wj" for h in initials)
    scoped = await timed("search wj within one county", "directory.search", q="wj", unit="c3-k7")
    assert all(h["units"][0]["id"] == "c3-k7" for h in scoped["members"])
    nothing = await timed("search qqqq (no match)", "directory.search", q="qqqq")
    assert nothing["members"] == []
    root = await timed("unit p (10 cities with head counts)", "directory.unit", unit="p")
    assert [c["members"] for c in root["children"]] == [BIG // 10] * 10
    county = await timed("unit c3-k7, 500 people", "directory.unit", unit="c3-k7", limit=500)
    assert len(county["members"]) == 500 and county["cursor"] is not None
    everyone = await timed(
        "unit p recursive, 500 people", "directory.unit", unit="p", recursive=True, limit=500
    )
    assert ids(everyone["members"]) == [f"u{i:06d}" for i in range(500)]
    changes = await timed("changes since 0, 1000", "directory.changes", since=0, limit=1000)
    assert changes["more"] and len(changes["units"]) + len(changes["members"]) == 1000
