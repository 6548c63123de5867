"""Unit tests for the address book's pure parts: parsing, visibility, pinyin keys,
ranking, cursors, and the numbering of directory changes."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imserver.config import LimitsConfig
from imserver.directory.cursors import decode_cursor, encode_cursor
from imserver.directory.pinyin import NameKeys, name_keys, query_key
from imserver.directory.search_rank import Tier, match_tier
from imserver.directory.visibility import Placement, Viewer, person_view
from imserver.errors import InvalidField
from imserver.protocol.requests import parse_request
from imserver.store.directory_changes import MEMBER, UNIT
from imserver.store.sqlite.directory_changes import SqliteChangeRecorder

# -- parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "directory.users"}, "users"),
        ({"type": "directory.users", "users": []}, "users"),
        ({"type": "directory.users", "users": ["u"] * 201}, "users"),
        ({"type": "directory.users", "users": ["ok", "not ok"]}, "users[1]"),
        ({"type": "directory.unit"}, "unit"),
        ({"type": "directory.unit", "unit": "a/b"}, "unit"),
        ({"type": "directory.unit", "unit": "x" * 65}, "unit"),
        ({"type": "directory.unit", "unit": "jx", "recursive": 1}, "recursive"),
        ({"type": "directory.unit", "unit": "jx", "limit": 0}, "limit"),
        ({"type": "directory.unit", "unit": "jx", "limit": 501}, "limit"),
        ({"type": "directory.unit", "unit": "jx", "cursor": ""}, "cursor"),
        ({"type": "directory.unit", "unit": "jx", "cursor": "c" * 513}, "cursor"),
        ({"type": "directory.search"}, "q"),
        ({"type": "directory.search", "q": " \t "}, "q"),
        ({"type": "directory.search", "q": "张" * 65}, "q"),
        ({"type": "directory.search", "q": "zs", "unit": "a b"}, "unit"),
        ({"type": "directory.search", "q": "zs", "limit": 101}, "limit"),
        ({"type": "directory.changes", "since": -1}, "since"),
        ({"type": "directory.changes", "since": True}, "since"),
        ({"type": "directory.changes", "limit": 1001}, "limit"),
    ],
)
def test_bad_directory_requests_name_the_field(frame: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_request({"id": 1, **frame}, LimitsConfig())
    assert caught.value.field == field


# -- what a user may see -----------------------------------------------------------

PROFILE = {
    "phone": "13812341234",
    "id_number": "360102197001011234",
    "email": "a@b.cn",
    "office_phone": "0791-88912345",
}
PLACES = [Placement("jx", "江西省", "省长", True)]


def test_person_view_masks_phone_and_id_for_ordinary_users() -> None:
    view = person_view(Viewer("clerk", pii_read=False), "gov", "省长", PLACES, PROFILE)
    assert view == {
        "user": "gov",
        "name": "省长",
        "units": [{"id": "jx", "name": "江西省", "title": "省长", "leader": True}],
        "profile": {
            "email": "a@b.cn",
            "id_number": "360102********1234",
            "office_phone": "0791-88912345",
            "phone": "138****1234",
        },
    }


@pytest.mark.parametrize("viewer", [Viewer("clerk", pii_read=True), Viewer("gov", pii_read=False)])
def test_person_view_is_clear_with_pii_read_or_for_oneself(viewer: Viewer) -> None:
    assert person_view(viewer, "gov", "省长", PLACES, PROFILE)["profile"] == PROFILE


@given(
    st.dictionaries(
        st.sampled_from(sorted(PROFILE)),
        st.text(st.characters(blacklist_characters="*"), min_size=1, max_size=40),
    )
)
def test_no_sensitive_value_leaks_without_pii_read(profile: dict[str, str]) -> None:
    shown = person_view(Viewer("v", pii_read=False), "s", "n", [], profile)["profile"]
    assert set(shown) == set(profile)
    for key in ("phone", "id_number"):
        if key in profile and len(profile[key]) > 1:
            assert shown[key] != profile[key]


# -- pinyin keys and ranking ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "initials", "full"),
    [
        ("张三", "zs", "zhangsan"),
        ("张三丰", "zsf", "zhangsanfeng"),
        ("吕布", "lb", "lvbu"),
        ("李 小-明", "lxm", "lixiaoming"),
        ("Alice王", "aw", "alicewang"),
        ("Zhang San", "zs", "zhangsan"),
        ("干部12", "gb1", "ganbu12"),
    ],
)
def test_name_keys(name: str, initials: str, full: str) -> None:
    assert name_keys(name) == NameKeys(initials, full)


@pytest.mark.parametrize(
    ("query", "key"),
    [("zs", "zs"), ("ZS", "zs"), ("zhang san", "zhangsan"), ("张三", None), ("z-s", None)],
)
def test_query_key(query: str, key: str | None) -> None:
    assert query_key(query) == key


@pytest.mark.parametrize(
    ("query", "name", "tier"),
    [
        ("张三", "张三", Tier.NAME_EXACT),
        ("张三", "张三丰", Tier.NAME_PREFIX),
        ("zs", "张三", Tier.INITIALS_EXACT),
        ("ZS", "赵四", Tier.INITIALS_EXACT),
        ("zs", "张三丰", Tier.INITIALS_PREFIX),
        ("zhangs", "张三", Tier.PINYIN_PREFIX),
        ("zhang san", "张三丰", Tier.PINYIN_PREFIX),
        ("张三", "王张三", Tier.NAME_CONTAINS),
        ("三", "张三", Tier.NAME_CONTAINS),
        ("zs", "王张三", None),  # pinyin matches from the start only
        ("李", "张三", None),
    ],
)
def test_match_tier(query: str, name: str, tier: Tier | None) -> None:
    assert match_tier(query, name, name_keys(name)) == tier


def test_tiers_rank_exact_before_prefix_before_pinyin_before_contains() -> None:
    names = ["王张三", "张三丰", "张三", "张珊", "赵四"]
    ranked = sorted((t, n) for n in names if (t := match_tier("张三", n, name_keys(n))) is not None)
    assert [n for _, n in ranked] == ["张三", "张三丰", "王张三"]


# -- cursors ----------------------------------------------------------------------------


@given(st.tuples(st.integers(0, 5), st.text(max_size=30), st.text(max_size=30)))
def test_cursor_round_trip(position: tuple[int, str, str]) -> None:
    cursor = encode_cursor("search", position)
    assert decode_cursor(cursor, "search", (int, str, str)) == position
    assert cursor.isascii() and "=" not in cursor


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!", "bm90IGpzb24", encode_cursor("unit", ("jx", 1, "u")), encode_cursor("search", ())],
)
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidField) as caught:
        decode_cursor(cursor, "search", (int, str, str))
    assert caught.value.field == "cursor"


@given(st.text(max_size=60))
def test_any_string_decodes_or_is_invalid_field(cursor: str) -> None:
    try:
        decode_cursor(cursor, "unit", (str, int, str))
    except InvalidField as e:
        assert e.field == "cursor"


# -- change numbering -------------------------------------------------------------------------


def _log() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("INSERT INTO counters VALUES ('directory_change', 0)")
    conn.execute(
        "CREATE TABLE directory_changes (kind TEXT, id TEXT, seq INTEGER, PRIMARY KEY (kind, id))"
    )
    return conn


def test_changes_get_increasing_numbers_and_the_latest_wins() -> None:
    conn = _log()
    first = SqliteChangeRecorder()
    first.note(UNIT, ["jx", "nc"])
    first.note(MEMBER, ["gov", "jx"])  # a member may share a unit's id
    first.note(UNIT, ["jx"])  # noted again: moves to the end
    assert first.flush(conn) == 4
    assert first.flush(conn) == 0  # nothing new
    second = SqliteChangeRecorder()
    second.note(MEMBER, ["gov"])
    second.flush(conn)
    rows = conn.execute("SELECT kind, id, seq FROM directory_changes ORDER BY seq").fetchall()
    assert rows == [("unit", "nc", 1), ("member", "jx", 3), ("unit", "jx", 4), ("member", "gov", 5)]
