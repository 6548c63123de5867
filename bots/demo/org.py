"""A deterministic sample organisation: 江西省 down to the villages, ~250 people.

Five administrative levels (province → city → county → township → village)
with a 办公室 department in the province, each city and each county, a
leader (主要负责人, ``leader: true``) and a deputy in every unit, and zh-CN
names drawn from a seeded generator, so every run of the demo (and the test
that checks its numbers) sees the same people. The place names are
illustrative, not a gazetteer.

``org_ndjson()`` is the body of a full directory sync (docs/admin.md
section 1); the demo's simulated business systems use the same ``Org`` to
pick approvers and units the way a real OA or 12345 platform knows its own
org chart.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蔡蒋余于杜叶程魏苏吕丁任沈姚卢傅钟姜崔谭廖范汪陆金石戴贾韦夏邱方侯邹熊孟秦白江阎薛尹段雷黎史龙陶贺顾毛郝龚邵万钱严覃武洪"  # noqa: E501
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英文华建国志强海燕玉兰晓东红梅春生德明雪梅俊杰子涵浩然欣怡宇轩思远佳怡雨欣梓萱博文天佑嘉怡晨阳"  # noqa: E501

CITIES = {"nc": "南昌市", "jj": "九江市"}
COUNTIES = {"nc": {"xj": "新建区", "jx": "进贤县"}, "jj": {"xs": "修水县", "dc": "都昌县"}}
TOWNSHIP_NAMES = ["石岗镇", "松湖镇", "望城镇", "溪霞镇", "三里乡", "前坊镇", "白槎镇", "大港镇"]
VILLAGE_NAMES = ["东山村", "西湖村", "南塘村", "北岭村", "上坊村", "下埠村", "新田村", "老屋村"]
#: (level, people per unit, the leader's and deputy's titles, staff title)
STAFFING = {
    "province": (6, "省长", "副省长", "处长"),
    "city": (6, "市长", "副市长", "科长"),
    "county": (7, "县长", "副县长", "股长"),
    "township": (6, "镇长", "副镇长", "干事"),
    "village": (5, "村主任", "村副主任", "村干部"),
    "department": (4, "主任", "副主任", "科员"),
}


@dataclass(frozen=True, slots=True)
class Unit:
    id: str
    name: str
    level: str
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class Person:
    user: str
    name: str
    unit: str
    title: str
    leader: bool


@dataclass(slots=True)
class Org:
    """The units (parents first) and their people, with the lookups the demo needs."""

    units: list[Unit] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)

    def unit(self, unit_id: str) -> Unit:
        return next(u for u in self.units if u.id == unit_id)

    def at_level(self, level: str) -> list[Unit]:
        return [u for u in self.units if u.level == level]

    def members(self, unit_id: str) -> list[Person]:
        return [p for p in self.people if p.unit == unit_id]

    def leaders(self, unit_id: str) -> list[Person]:
        """Who leads a unit: its head and its deputy (both ``leader: true``)."""
        return [p for p in self.members(unit_id) if p.leader]

    def staff(self, unit_id: str) -> list[Person]:
        return [p for p in self.members(unit_id) if not p.leader]

    def person(self, user: str) -> Person:
        return next(p for p in self.people if p.user == user)

    def chain_up(self, unit_id: str) -> list[Unit]:
        """The unit and its ancestors, nearest first (an approval goes up this chain)."""
        out, cur = [], self.unit(unit_id)
        while True:
            out.append(cur)
            if cur.parent is None:
                return out
            cur = self.unit(cur.parent)


def build_org(seed: int = 2026) -> Org:
    """The sample org; the same ``seed`` gives the same units, ids and names."""
    rng = random.Random(seed)
    org = Org()
    used: set[str] = set()

    def add_unit(unit: Unit) -> None:
        org.units.append(unit)
        count, head, deputy, staff = STAFFING[unit.level]
        for i in range(count):
            title = head if i == 0 else deputy if i == 1 else staff
            org.people.append(
                Person(f"{unit.id}.{i + 1:02d}", _name(rng, used), unit.id, title, i < 2)
            )

    add_unit(Unit("jx", "江西省", "province"))
    add_unit(Unit("jx.ban", "省政府办公厅", "department", "jx"))
    towns, villages = iter(TOWNSHIP_NAMES), 0
    for city_id, city_name in CITIES.items():
        cid = f"jx.{city_id}"
        add_unit(Unit(cid, city_name, "city", "jx"))
        add_unit(Unit(f"{cid}.ban", f"{city_name[:-1]}政府办", "department", cid))
        for county_id, county_name in COUNTIES[city_id].items():
            kid = f"{cid}.{county_id}"
            add_unit(Unit(kid, county_name, "county", cid))
            add_unit(Unit(f"{kid}.ban", f"{county_name[:-1]}政府办", "department", kid))
            for t in range(2):
                tid = f"{kid}.t{t + 1}"
                add_unit(Unit(tid, next(towns), "township", kid))
                for v in range(3):
                    name = VILLAGE_NAMES[(villages + v) % len(VILLAGE_NAMES)]
                    add_unit(Unit(f"{tid}.v{v + 1}", name, "village", tid))
                villages += 3
    return org


def _name(rng: random.Random, used: set[str]) -> str:
    """A zh-CN name (surname + one or two characters), unique inside the org."""
    while True:
        given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))
        name = rng.choice(SURNAMES) + given
        if name not in used:
            used.add(name)
            return name


def org_lines(org: Org) -> Iterator[dict[str, object]]:
    """The directory-sync lines: every unit (parents first), then every person."""
    for u in org.units:
        line: dict[str, object] = {"op": "unit", "id": u.id, "name": u.name, "level": u.level}
        if u.parent is not None:
            line["parent"] = u.parent
        yield line
    for i, p in enumerate(org.people):
        membership = {"unit": p.unit, "title": p.title, "leader": p.leader}
        profile = {"phone": f"139{i:08d}", "email": f"{p.user}@example.gov.cn"}
        yield {
            "op": "member",
            "user": p.user,
            "name": p.name,
            "units": [membership],
            "profile": profile,
        }


def org_ndjson(org: Org) -> bytes:
    """The body of ``POST /admin/v1/directory/sync?mode=full``."""
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in org_lines(org)).encode()
