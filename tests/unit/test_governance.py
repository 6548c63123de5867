"""Unit tests for imserver/governance.py: zombie / empty / duplicate work groups.

Boundaries pinned here (default rules: 90 / 2 / 0.8 / 7):

* zombie: last message exactly 90 days ago is a zombie, 90 days minus 1 ms is not;
* empty: exactly 2 members is empty, 3 is not; never a message is empty;
* min age: a group exactly 7 days old can be flagged, 7 days minus 1 ms cannot;
* duplicate: Jaccard exactly at the threshold counts (4/5 at 0.8, 7/25 at 0.28 —
  the latter is a float trap: ``0.28 * 25 > 7``).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.governance import (
    CSV_COLUMNS,
    DAY_MS,
    Finding,
    GovernanceRules,
    GroupStats,
    classify,
    jaccard,
    similar_pairs,
    to_csv,
    to_json,
)

NOW = 1_750_000_000_000
UNIT = "/jx/nc/nc-xh/"


def grp(
    conv: str,
    members: Iterable[str],
    *,
    unit: str = UNIT,
    created_days: float = 365,
    last_days: float | None = 1,
    count: int | None = None,
    name: str | None = None,
    created_ms: int | None = None,
    last_ms: int | None = None,
) -> GroupStats:
    """A group created ``created_days`` ago whose last message was ``last_days`` ago.

    ``created_ms`` / ``last_ms`` (absolute) override the day-based values for
    millisecond boundaries. ``count`` defaults to 10 with a last message, else 0.
    """
    created = created_ms if created_ms is not None else NOW - int(created_days * DAY_MS)
    if last_ms is not None:
        last: int | None = last_ms
    elif last_days is None:
        last = None
    else:
        last = NOW - int(last_days * DAY_MS)
    if count is None:
        count = 0 if last is None else 10
    return GroupStats(
        conv=conv if conv.startswith("g:") else f"g:{conv}",
        name=name if name is not None else f"群{conv}",
        unit_path=unit,
        owner="owner",
        members=frozenset(members),
        created_at=created,
        last_message_at=last,
        message_count=count,
    )


def users(prefix: str, n: int, start: int = 1) -> list[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


def kinds(findings: list[Finding]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for f in findings:
        out[f.conv].add(f.kind)
    return dict(out)


def summary(findings: list[Finding]) -> list[tuple[str, str, str, str | None]]:
    return [(f.unit_path, f.kind, f.conv, f.duplicate_of) for f in findings]


# --------------------------------------------------------------------------- jaccard


def test_jaccard_basics() -> None:
    a = frozenset({"a", "b", "c"})
    assert jaccard(a, a) == 1.0
    assert jaccard(a, frozenset({"a", "b"})) == pytest.approx(2 / 3)
    assert jaccard(a, frozenset({"x"})) == 0.0
    assert jaccard(a, frozenset()) == 0.0
    assert jaccard(frozenset(), frozenset()) == 0.0


# --------------------------------------------------------------------------- rules validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"zombie_days": 0},
        {"empty_max_members": -1},
        {"min_age_days": -1},
        {"duplicate_threshold": 0.0},
        {"duplicate_threshold": 1.01},
        {"duplicate_threshold": float("nan")},
    ],
)
def test_rules_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GovernanceRules(**kwargs)


def test_rules_defaults() -> None:
    r = GovernanceRules()
    assert (r.zombie_days, r.empty_max_members, r.duplicate_threshold, r.min_age_days) == (
        90,
        2,
        0.8,
        7,
    )


def test_duplicate_conv_refused() -> None:
    with pytest.raises(ValueError, match="more than once"):
        classify([grp("a", users("u", 5)), grp("a", users("v", 5))], NOW)


# --------------------------------------------------------------------------- zombie


def test_zombie_exactly_n_days() -> None:
    g = grp("z", users("u", 5), last_ms=NOW - 90 * DAY_MS)
    (f,) = classify([g], NOW)
    assert f.kind == "zombie"
    assert f.last_message_at == NOW - 90 * DAY_MS
    assert "90" in f.reason


def test_zombie_one_ms_short_of_n_days() -> None:
    g = grp("z", users("u", 5), last_ms=NOW - 90 * DAY_MS + 1)
    assert classify([g], NOW) == []


def test_zombie_custom_days() -> None:
    g = grp("z", users("u", 5), last_days=31)
    assert classify([g], NOW, GovernanceRules(zombie_days=30))[0].kind == "zombie"
    assert classify([g], NOW, GovernanceRules(zombie_days=32)) == []


def test_zombie_reason_days_and_fields() -> None:
    g = grp("z", users("u", 5), last_days=120.5, count=7, name="旧项目群")
    (f,) = classify([g], NOW)
    assert f.kind == "zombie"
    assert "120 天" in f.reason and "120 days" in f.reason
    assert f.member_count == 5
    assert f.name == "旧项目群"
    assert f.duplicate_of is None and f.similarity is None


# --------------------------------------------------------------------------- empty


def test_empty_exactly_max_members() -> None:
    (f,) = classify([grp("e", users("u", 2))], NOW)
    assert f.kind == "empty"
    assert f.member_count == 2
    assert "2" in f.reason


def test_three_members_not_empty() -> None:
    assert classify([grp("e", users("u", 3))], NOW) == []


def test_empty_custom_max_members() -> None:
    g = grp("e", users("u", 3))
    assert classify([g], NOW, GovernanceRules(empty_max_members=3))[0].kind == "empty"
    assert classify([grp("e", users("u", 1))], NOW, GovernanceRules(empty_max_members=0)) == []


def test_empty_never_a_message() -> None:
    (f,) = classify([grp("e", users("u", 20), last_days=None)], NOW)
    assert f.kind == "empty"
    assert f.last_message_at is None
    assert "从未" in f.reason


def test_empty_zero_count_with_timestamp_is_never() -> None:
    # Inconsistent row (only notices were counted away): the less active reading wins.
    (f,) = classify([grp("e", users("u", 20), last_days=3, count=0)], NOW)
    assert f.kind == "empty"


def test_empty_both_reasons() -> None:
    (f,) = classify([grp("e", ["u1"], last_days=None)], NOW)
    assert f.kind == "empty"
    assert "1 member" in f.reason and "no message" in f.reason


def test_empty_no_members() -> None:
    (f,) = classify([grp("e", [], last_days=None)], NOW)
    assert f.kind == "empty" and f.member_count == 0


# --------------------------------------------------------------------------- exclusivity


def test_empty_wins_over_zombie() -> None:
    g = grp("ez", users("u", 2), last_days=400)
    (f,) = classify([g], NOW)
    assert f.kind == "empty"


def test_zombie_and_empty_never_both() -> None:
    groups = [
        grp(f"x{n}-{last}", users("u", n), last_days=last)
        for n in range(0, 5)
        for last in (None, 1, 89, 90, 91, 500)
    ]
    for conv, ks in kinds(classify(groups, NOW)).items():
        assert ks != {"empty", "zombie"}, conv


# --------------------------------------------------------------------------- min age


def test_min_age_exactly_met_is_flagged() -> None:
    g = grp("n", users("u", 20), created_ms=NOW - 7 * DAY_MS, last_days=None)
    assert [f.kind for f in classify([g], NOW)] == ["empty"]


def test_min_age_protects_young_empty() -> None:
    g = grp("n", users("u", 1), created_ms=NOW - 7 * DAY_MS + 1, last_days=None)
    assert classify([g], NOW) == []


def test_min_age_protects_young_zombie() -> None:
    # zombie_days below min_age_days: the young group is still protected.
    rules = GovernanceRules(zombie_days=2, min_age_days=7)
    young = grp("y", users("u", 5), created_days=6, last_days=5)
    old = grp("o", users("v", 5), created_days=8, last_days=5)
    assert summary(classify([young, old], NOW, rules)) == [(UNIT, "zombie", "g:o", None)]


def test_min_age_zero_and_future_created_at() -> None:
    now_group = grp("n", ["u1"], created_ms=NOW, last_days=None)
    assert classify([now_group], NOW, GovernanceRules(min_age_days=0))[0].kind == "empty"
    future = grp("f", ["u1"], created_ms=NOW + DAY_MS, last_days=None)
    assert classify([future], NOW, GovernanceRules(min_age_days=0)) == []


def test_min_age_does_not_protect_duplicates() -> None:
    old = grp("old", users("u", 6), created_days=100, count=50)
    new = grp("new", users("u", 6), created_days=1, last_days=None)
    assert summary(classify([old, new], NOW)) == [(UNIT, "duplicate", "g:new", "g:old")]


# --------------------------------------------------------------------------- duplicates


def test_duplicate_threshold_exactly_met() -> None:
    a = grp("a", users("u", 5), count=20)
    b = grp("b", users("u", 4), count=10)  # 4/5 == 0.8
    (f,) = classify([a, b], NOW)
    assert (f.kind, f.conv, f.duplicate_of) == ("duplicate", "g:b", "g:a")
    assert f.similarity == 0.8
    assert "0.80" in f.reason


def test_duplicate_threshold_float_trap() -> None:
    # 0.28 * 25 == 7.000000000000001: a naive ceil(t * n) minimum overlap (8) would
    # shorten the prefix of the 25-member group to its 18 own members and miss 7/25.
    a = grp("a", users("u", 25), count=20)
    b = grp("b", users("u", 7), count=10)
    assert 0.28 * 25 > 7 and 7 / 25 >= 0.28
    rules = GovernanceRules(duplicate_threshold=0.28)
    assert similar_pairs([a, b], 0.28) == [("g:a", "g:b", 0.28)]
    assert summary(classify([a, b], NOW, rules)) == [(UNIT, "duplicate", "g:b", "g:a")]


def test_duplicate_threshold_exactly_met_other_fractions() -> None:
    for n, k in ((10, 7), (3, 2), (9, 6), (12, 11)):
        t = k / n
        a = grp("a", users("u", n), count=20)
        b = grp("b", users("u", k), count=10)
        assert similar_pairs([a, b], t) == [("g:a", "g:b", t)], (n, k)
        assert similar_pairs([a, b], k / n + 1e-9) == [], (n, k)


def test_duplicate_just_below_threshold() -> None:
    a = grp("a", users("u", 6))
    b = grp("b", [*users("u", 4), "x"])  # 4 / 7
    assert classify([a, b], NOW, GovernanceRules(duplicate_threshold=0.58)) == []
    assert len(classify([a, b], NOW, GovernanceRules(duplicate_threshold=0.57))) == 1


def test_duplicate_threshold_one_means_identical() -> None:
    a = grp("a", users("u", 5), count=3)
    b = grp("b", users("u", 5), count=2)
    c = grp("c", users("u", 4), count=1)
    rules = GovernanceRules(duplicate_threshold=1.0)
    assert summary(classify([a, b, c], NOW, rules)) == [(UNIT, "duplicate", "g:b", "g:a")]


def test_duplicates_only_within_same_unit() -> None:
    members = users("u", 6)
    groups = [
        grp("a1", members, unit="/jx/nc/a/", count=5),
        grp("b1", members, unit="/jx/nc/b/", count=5),
        grp("b2", members, unit="/jx/nc/b/", count=1),
        grp("n1", members, unit="", count=5),
        grp("n2", members, unit="", count=1),
        # Unit paths are compared exactly: a prefix unit is another unit.
        grp("p1", members, unit="/jx/nc/", count=5),
    ]
    assert summary(classify(groups, NOW)) == [("/jx/nc/b/", "duplicate", "g:b2", "g:b1")]
    assert similar_pairs(groups, 0.8) == [("g:b1", "g:b2", 1.0)]


def test_empty_member_sets_are_not_duplicates() -> None:
    groups = [grp("a", [], last_days=None), grp("b", [], last_days=None)]
    assert [f.kind for f in classify(groups, NOW)] == ["empty", "empty"]


def test_group_can_be_empty_and_duplicate() -> None:
    keeper = grp("k", ["u1", "u2"], count=100)
    dup = grp("d", ["u1", "u2"], count=1)
    assert summary(classify([keeper, dup], NOW)) == [
        (UNIT, "duplicate", "g:d", "g:k"),
        (UNIT, "empty", "g:d", None),
        (UNIT, "empty", "g:k", None),
    ]


def test_group_can_be_zombie_and_duplicate() -> None:
    keeper = grp("k", users("u", 5), count=100, last_days=1)
    dup = grp("d", users("u", 5), count=1, last_days=200)
    assert summary(classify([keeper, dup], NOW)) == [
        (UNIT, "duplicate", "g:d", "g:k"),
        (UNIT, "zombie", "g:d", None),
    ]


@pytest.mark.parametrize(
    ("a_kwargs", "b_kwargs", "keeper"),
    [
        # message_count decides first, even against recency and age
        ({"count": 11, "last_days": 80, "created_days": 10}, {"count": 10, "last_days": 1}, "a"),
        # then the later last message; never-messaged loses
        ({"count": 10, "last_days": 3}, {"count": 10, "last_days": 2}, "b"),
        ({"count": 0, "last_days": None}, {"count": 0, "last_days": 9}, "b"),
        # then the older group
        ({"count": 5, "last_days": 2, "created_days": 50}, {"count": 5, "last_days": 2}, "b"),
        ({"count": 0, "last_days": None, "created_days": 400}, {"last_days": None}, "a"),
        # then the smaller conv id
        ({"count": 5, "last_days": 2}, {"count": 5, "last_days": 2}, "a"),
    ],
)
def test_keeper_choice(a_kwargs: dict[str, Any], b_kwargs: dict[str, Any], keeper: str) -> None:
    a = grp("a", users("u", 5), **a_kwargs)
    b = grp("b", users("u", 5), **b_kwargs)
    for order in ([a, b], [b, a]):
        dups = [f for f in classify(order, NOW) if f.kind == "duplicate"]
        assert len(dups) == 1
        other = "b" if keeper == "a" else "a"
        assert (dups[0].conv, dups[0].duplicate_of) == (f"g:{other}", f"g:{keeper}")


def test_cluster_transitive_and_keeper() -> None:
    # A~B (9/11) and B~C (8/9) but A vs C = 8/11 < 0.8: still one cluster.
    a = grp("a", [*users("u", 9), "x1", "x2"], count=5)
    b = grp("b", users("u", 9), count=3)
    c = grp("c", users("u", 8), count=100)  # the keeper: most messages
    pairs = similar_pairs([a, b, c], 0.8)
    assert pairs == [("g:a", "g:b", 9 / 11), ("g:b", "g:c", 8 / 9)]
    assert jaccard(a.members, c.members) == 8 / 11
    findings = classify([a, b, c], NOW)
    assert summary(findings) == [
        (UNIT, "duplicate", "g:a", "g:c"),
        (UNIT, "duplicate", "g:b", "g:c"),
    ]
    fa, fb = findings
    assert fa.similarity == 8 / 11
    assert "传递" in fa.reason and "through similar groups" in fa.reason
    assert "0.73" in fa.reason
    assert fb.similarity == 8 / 9
    assert "传递" not in fb.reason
    assert "cluster of 3" in fb.reason


def test_two_separate_clusters_in_one_unit() -> None:
    groups = [
        grp("a1", users("u", 5), count=9),
        grp("a2", users("u", 5), count=1),
        grp("b1", users("v", 5), count=1),
        grp("b2", users("v", 5), count=9),
        grp("b3", users("v", 5), count=2),
    ]
    assert summary(classify(groups, NOW)) == [
        (UNIT, "duplicate", "g:a2", "g:a1"),
        (UNIT, "duplicate", "g:b1", "g:b2"),
        (UNIT, "duplicate", "g:b3", "g:b2"),
    ]


def test_input_order_irrelevant() -> None:
    groups = seeded_groups()
    expected = classify(groups, NOW)
    rng = random.Random(7)
    for _ in range(5):
        shuffled = groups[:]
        rng.shuffle(shuffled)
        assert classify(iter(shuffled), NOW) == expected


# --------------------------------------------------------------------------- seeded data set


def seeded_groups() -> list[GroupStats]:
    u = users("u", 10)
    a, b, c, d = "/jx/nc/a/", "/jx/nc/b/", "", "/jx/nc/c/"
    e = users("e", 5)
    return [
        # unit a
        grp("a01", u, unit=a, created_days=400, last_days=1, count=500),
        grp("a02", u[:9], unit=a, created_days=300, last_days=5, count=50),  # ~a01 0.9
        grp("a03", [*u[:8], "x1"], unit=a, created_days=200, last_days=100, count=20),  # ~a02 0.8
        grp("a04", ["u1", "u2"], unit=a, created_days=30, last_days=1, count=100),
        grp("a05", users("v", 5), unit=a, created_days=100, last_days=None),
        grp("a06", users("v", 5), unit=a, created_days=50, last_days=2, count=3),
        grp("a07", users("w", 3), unit=a, created_days=3, last_days=None),
        grp("a08", users("w", 3), unit=a, created_days=2, last_days=None),
        grp("a09", users("p", 6), unit=a, created_ms=NOW - 7 * DAY_MS, last_days=None),
        grp("a10", users("q", 6), unit=a, created_ms=NOW - 7 * DAY_MS + 1, last_days=None),
        grp("a11", users("r", 4), unit=a, created_days=200, last_ms=NOW - 90 * DAY_MS),
        grp("a12", users("s", 4), unit=a, created_days=200, last_ms=NOW - 90 * DAY_MS + 1),
        grp("a13", users("t", 3), unit=a, created_days=100, last_days=1, count=5),
        grp("a14", ["t4", "t5"], unit=a, created_days=100, last_days=100, count=5),
        grp("a15", users("k", 5), unit=a, created_days=100, last_days=1, count=10),
        grp("a16", users("k", 4), unit=a, created_days=100, last_days=1, count=10),  # 0.8
        # unit b
        grp("b01", u, unit=b, created_days=400, last_days=1, count=1000),
        grp("b02", u, unit=b, created_days=400, last_days=1, count=5),
        grp("b03", ["u1"], unit=b, created_days=1000, last_days=500, count=1),
        grp("b04", [], unit=b, created_days=10, last_days=None),
        grp("b05", [], unit=b, created_days=10, last_days=None),
        grp("b06", users("m", 8), unit=b, created_days=120, last_days=95, count=40),
        grp("b07", users("m", 9), unit=b, created_days=100, last_days=1, count=41),
        grp("b08", users("n", 5), unit=b, created_days=100, last_days=3, count=5),
        grp("b09", [*users("n", 4), "n6"], unit=b, created_days=100, last_days=3, count=5),
        grp("b10", users("z", 4), unit=b, created_days=50, last_days=5, count=0),
        # unknown unit
        grp("c01", u, unit=c, created_days=400, last_days=1, count=3),
        grp("c02", u, unit=c, created_days=400, last_days=200, count=3),
        grp("c03", ["u1", "u2"], unit=c, created_days=50, last_days=1, count=9),
        # unit c: keeper by last message, then by age
        grp("d01", e, unit=d, created_days=100, last_days=10, count=10),
        grp("d02", e, unit=d, created_days=200, last_days=3, count=10),
        grp("d03", e, unit=d, created_days=300, last_days=3, count=10),
        grp("d04", [*e[:4], "f1"], unit=d, created_days=30, last_days=1, count=1),
        grp("d05", users("f", 3), unit=d, created_days=100, last_days=1, count=1),
    ]


SEEDED_EXPECTED: list[tuple[str, str, str, str | None]] = [
    ("", "empty", "g:c03", None),
    ("", "zombie", "g:c02", None),
    ("/jx/nc/a/", "duplicate", "g:a02", "g:a01"),
    ("/jx/nc/a/", "duplicate", "g:a03", "g:a01"),  # transitively, via a02
    ("/jx/nc/a/", "duplicate", "g:a05", "g:a06"),
    ("/jx/nc/a/", "duplicate", "g:a08", "g:a07"),  # young, but duplicates are not protected
    ("/jx/nc/a/", "duplicate", "g:a16", "g:a15"),  # full tie: smaller conv id keeps
    ("/jx/nc/a/", "empty", "g:a04", None),
    ("/jx/nc/a/", "empty", "g:a05", None),
    ("/jx/nc/a/", "empty", "g:a09", None),
    ("/jx/nc/a/", "empty", "g:a14", None),
    ("/jx/nc/a/", "zombie", "g:a03", None),
    ("/jx/nc/a/", "zombie", "g:a11", None),
    ("/jx/nc/b/", "duplicate", "g:b02", "g:b01"),
    ("/jx/nc/b/", "duplicate", "g:b06", "g:b07"),
    ("/jx/nc/b/", "empty", "g:b03", None),
    ("/jx/nc/b/", "empty", "g:b04", None),
    ("/jx/nc/b/", "empty", "g:b05", None),
    ("/jx/nc/b/", "empty", "g:b10", None),
    ("/jx/nc/b/", "zombie", "g:b06", None),
    ("/jx/nc/c/", "duplicate", "g:d01", "g:d03"),
    ("/jx/nc/c/", "duplicate", "g:d02", "g:d03"),
]


def test_seeded_data_set() -> None:
    groups = seeded_groups()
    assert len(groups) == 34
    findings = classify(groups, NOW)
    assert summary(findings) == SEEDED_EXPECTED
    sims = {f.conv: f.similarity for f in findings if f.kind == "duplicate"}
    assert sims["g:a02"] == pytest.approx(0.9)
    assert sims["g:a03"] == pytest.approx(8 / 11)
    assert sims["g:a16"] == 0.8
    assert sims["g:b02"] == 1.0
    assert sims["g:b06"] == pytest.approx(8 / 9)


def test_findings_sorted() -> None:
    findings = classify(seeded_groups(), NOW)
    keys = [(f.unit_path, f.kind, f.conv) for f in findings]
    assert keys == sorted(keys)


# --------------------------------------------------------------------------- export


def test_to_json() -> None:
    findings = classify(seeded_groups(), NOW)
    rows = to_json(findings)
    assert len(rows) == len(findings)
    for row, f in zip(rows, findings, strict=True):
        assert list(row) == list(CSV_COLUMNS)
        assert row["conv"] == f.conv and row["kind"] == f.kind
        assert row["similarity"] == f.similarity
        assert row["last_message_at"] == f.last_message_at
    text = json.dumps(rows, ensure_ascii=False)
    assert json.loads(text) == rows
    assert to_json([]) == []


def parse_csv(text: str) -> list[list[str]]:
    assert text.startswith("\ufeff")
    assert not text.startswith("\ufeff\ufeff")
    return list(csv.reader(io.StringIO(text[1:], newline="")))


def test_csv_round_trip() -> None:
    tricky = [
        '南昌市,西湖区 "重点项目" 专班',
        "多行\n名称",
        "普通工作群",
        "含'单引号'与,逗号",
    ]
    groups = [
        grp(f"t{i}", users("u", 2), name=name, last_days=None) for i, name in enumerate(tricky)
    ]
    groups += [
        grp("k", users("v", 5), name="保留群", count=9),
        grp("d", users("v", 5), name="重复,群", count=1, last_days=3),
    ]
    findings = classify(groups, NOW)
    text = to_csv(findings)
    # UTF-8 with the BOM encodes to EF BB BF at the front; Chinese survives the trip.
    raw = text.encode("utf-8")
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.decode("utf-8-sig") == text[1:]
    rows = parse_csv(text)
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == len(findings) + 1
    for row, f in zip(rows[1:], findings, strict=True):
        assert row[0] == f.conv
        assert row[1] == f.name
        assert row[2] == f.unit_path
        assert row[3] == f.kind
        assert row[4] == f.reason
        assert int(row[5]) == f.member_count
        assert row[6] == ("" if f.last_message_at is None else str(f.last_message_at))
        assert row[7] == (f.duplicate_of or "")
        if f.similarity is None:
            assert row[8] == ""
        else:
            assert float(row[8]) == pytest.approx(f.similarity, abs=5e-5)
    names = {row[1] for row in rows[1:]}
    assert set(tricky) <= names
    assert "重复,群" in names
    dup = next(r for r in rows[1:] if r[3] == "duplicate")
    assert dup[7] == "g:k" and dup[8] == "1.0000"
    assert "保留群" in dup[4]


def test_csv_quoting_is_rfc4180() -> None:
    g = grp("q", ["u1"], name='a,"b"', last_days=None)
    text = to_csv(classify([g], NOW))
    assert '"a,""b"""' in text
    assert text.endswith("\r\n")


def test_csv_empty_has_header_only() -> None:
    assert parse_csv(to_csv([])) == [list(CSV_COLUMNS)]


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x")', "+1", "-1+2", "@SUM(A1)", "\tx"])
def test_csv_neutralises_formulas(name: str) -> None:
    g = grp("f", ["u1"], name=name, last_days=None)
    rows = parse_csv(to_csv(classify([g], NOW)))
    assert rows[1][1] == "'" + name
    # JSON is not a spreadsheet: left as is.
    assert to_json(classify([g], NOW))[0]["name"] == name


# --------------------------------------------------------------------------- reference check


def brute_pairs(groups: list[GroupStats], t: float) -> list[tuple[str, str, float]]:
    out = []
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            if a.unit_path and a.unit_path == b.unit_path:
                s = jaccard(a.members, b.members)
                if s >= t:
                    x, y = sorted((a.conv, b.conv))
                    out.append((x, y, s))
    return sorted(out)


def brute_duplicates(groups: list[GroupStats], t: float) -> set[tuple[str, str]]:
    """(conv, keeper) via naive flood fill over brute-force pairs."""
    adj: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in brute_pairs(groups, t):
        adj[a].add(b)
        adj[b].add(a)
    by_conv = {g.conv: g for g in groups}
    done: set[str] = set()
    out: set[tuple[str, str]] = set()
    for start in adj:
        if start in done:
            continue
        comp, todo = {start}, [start]
        while todo:
            for nxt in adj[todo.pop()]:
                if nxt not in comp:
                    comp.add(nxt)
                    todo.append(nxt)
        done |= comp
        ranked = sorted(
            comp,
            key=lambda c: (
                -by_conv[c].message_count,
                by_conv[c].last_message_at is None,
                -(by_conv[c].last_message_at or 0),
                by_conv[c].created_at,
                c,
            ),
        )
        out |= {(c, ranked[0]) for c in ranked[1:]}
    return out


def brute_lifecycle(g: GroupStats, rules: GovernanceRules) -> str | None:
    if NOW - g.created_at < rules.min_age_days * DAY_MS:
        return None
    never = g.message_count == 0 or g.last_message_at is None
    if len(g.members) <= rules.empty_max_members or never:
        return "empty"
    assert g.last_message_at is not None
    if NOW - g.last_message_at >= rules.zombie_days * DAY_MS:
        return "zombie"
    return None


POOL = [f"u{i:02d}" for i in range(12)]


@st.composite
def group_sets(draw: st.DrawFn) -> list[GroupStats]:
    n_units = draw(st.integers(1, 3))
    units = ["/jx/a/", "/jx/b/", "/jx/c/"][:n_units]
    n = draw(st.integers(0, 30))
    out = []
    for i in range(n):
        members = draw(st.frozensets(st.sampled_from(POOL), max_size=12))
        count = draw(st.integers(0, 3))
        last = None if count == 0 else NOW - draw(st.integers(0, 200)) * DAY_MS
        out.append(
            GroupStats(
                conv=f"g:{i:02d}",
                name=f"群{i}",
                unit_path=draw(st.sampled_from(units)),
                owner="o",
                members=members,
                created_at=NOW - draw(st.integers(0, 300)) * DAY_MS,
                last_message_at=last,
                message_count=count,
            )
        )
    return out


THRESHOLDS = st.one_of(
    st.sampled_from([0.1, 0.25, 0.28, 1 / 3, 0.5, 0.6, 2 / 3, 0.7, 0.75, 0.8, 0.9, 1.0]),
    st.floats(min_value=0.01, max_value=1.0),
)


@settings(max_examples=300, deadline=None)
@given(groups=group_sets(), t=THRESHOLDS)
def test_matches_brute_force(groups: list[GroupStats], t: float) -> None:
    assert similar_pairs(groups, t) == brute_pairs(groups, t)
    rules = GovernanceRules(duplicate_threshold=t)
    findings = classify(groups, NOW, rules)
    dups = {(f.conv, f.duplicate_of) for f in findings if f.kind == "duplicate"}
    assert dups == brute_duplicates(groups, t)
    assert len(dups) == sum(1 for f in findings if f.kind == "duplicate")  # each once
    life = {(f.conv, f.kind) for f in findings if f.kind != "duplicate"}
    expected_life = set()
    for g in groups:
        k = brute_lifecycle(g, rules)
        if k is not None:
            expected_life.add((g.conv, k))
    assert life == expected_life


# --------------------------------------------------------------------------- performance


def test_performance_5000_groups_one_unit() -> None:
    rng = random.Random(20250101)
    staff = [f"s{i:04d}" for i in range(3000)]
    head = ["unit-head", "deputy"]  # in every group: the prefix filter must cope
    groups: list[GroupStats] = []
    for i in range(5000):
        size = rng.randint(3, 40)
        members = frozenset(rng.sample(staff, size) + head)
        groups.append(grp(f"p{i:04d}", members, count=rng.randint(1, 50)))
    # Plant near copies: drop one member of a large group, keep the rest.
    planted = []
    for i in range(0, 5000, 250):
        base = groups[i]
        ordered = sorted(base.members)
        if len(ordered) >= 12:
            copy = frozenset(ordered[1:])
            groups.append(grp(f"q{i:04d}", copy, count=0, last_days=None))
            planted.append((f"g:q{i:04d}", base.conv))
    findings = classify(groups, NOW)
    dups = {(f.conv, f.duplicate_of) for f in findings if f.kind == "duplicate"}
    assert len(planted) >= 10
    for copy_conv, base_conv in planted:
        assert (copy_conv, base_conv) in dups  # the copy has no messages: the base keeps
