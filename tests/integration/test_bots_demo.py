"""The demo: a CI-sized ``python -m bots.demo scenario --quick`` run, and its sample org.

The scenario is run exactly as a user would run it - a child process that
itself starts ``python -m imserver serve`` and ``python -m bots run`` and
drives users over real WebSockets - and its exit code and summary numbers
are checked against what the scripted cases must produce.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bots.demo import hotline_flow, oa_flow, supervision_flow
from bots.demo.flows import flows
from bots.demo.org import Org, build_org, org_lines
from tests.processes import REPO

LEVELS = ["province", "city", "county", "township", "village"]


def test_quick_scenario_completes_every_flow_and_reports_its_numbers(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bots.demo", "scenario", "--quick", "--json", str(summary_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo scenario completed" in proc.stdout
    for label in ("approvals decided", "cases dispatched", "cases escalated", "tasks issued"):
        assert label in proc.stdout, label
    summary = json.loads(summary_path.read_text())
    assert summary["elapsed_s"] < 60
    assert set(summary["flows"]) == set(flows()) >= {"oa"}
    org = build_org()
    for name, result in summary["flows"].items():
        assert result["ok"] is True and result["problems"] == [], name
        assert result["counters"] == EXPECTED[name](org), name


def oa_counters(org: Org) -> dict[str, int]:
    cases = oa_flow.plan(org, quick=True)
    holders = sum(len(c.holders) for c in cases)
    decisions = sum(len(c.steps) for c in cases)
    return {
        "requests": len(cases),
        "cards_held": holders,
        "decisions": decisions,
        "approved": 2,  # the leave chain and the countersigned document
        "rejected": 1,  # the expense, by the township's deputy
        "withdrawn": 1,  # the withdrawn leave
        "holders_saw_final": holders,
        "forwarded": decisions,  # OA received each decision exactly once
        "forward_repeats": 0,
    }


def hotline_counters(org: Org) -> dict[str, int]:
    cases = hotline_flow.plan(org, quick=True)
    assert [c.outcome for c in cases] == ["close", "transfer", "return", "overdue"]
    handlers = [len(c.event["data"]["unit"]["handlers"]) for c in cases]
    moved_to = len(cases[1].event["data"]["transfer_units"][0]["handlers"])
    return {
        "dispatched": 4,
        "cards_held": sum(handlers),
        "phone_masked": sum(handlers),  # nobody in the demo holds pii:read
        "claimed": 3,  # the closed case, the transferred one (there), the overdue one
        "transferred": 1,
        "returned": 1,
        "closed": 3,
        "overdue": 1,
        "escalated": 1,
        "holders_saw_outcome": sum(handlers) + moved_to,
        "forwarded": 2 + 3 + 1 + 2,  # claimed+closed, transferred+claimed+closed, ...
        "forward_repeats": 0,
    }


def supervision_counters(org: Org) -> dict[str, int]:
    tasks = supervision_flow.plan(org, quick=True)
    on_time = [len(t.event["data"]["units"]) for t in tasks if not t.overdue]
    late = [len(t.event["data"]["units"]) for t in tasks if t.overdue]
    # A city and every level below it.
    assert [u["level"] for u in tasks[0].event["data"]["units"][:4]] == LEVELS[1:]
    return {
        "tasks": len(tasks),
        "sub_tasks": sum(on_time) + sum(late),
        "progress_reports": sum(on_time),
        "units_done": sum(on_time) + sum(late),
        "dinged": sum(late),
        "units_overdue": sum(late),
        "units_escalated": sum(late),
        "aggregates_all_done": len(tasks),
        "forwarded": 2 * sum(on_time) + sum(late),  # 进展 + 办结, or 办结 alone
        "forward_repeats": 0,
    }


EXPECTED: dict[str, Callable[[Org], dict[str, int]]] = {
    "oa": oa_counters,
    "hotline": hotline_counters,
    "supervision": supervision_counters,
}


def test_sample_org_has_five_levels_leaders_and_unique_zh_names() -> None:
    org = build_org()
    assert org == build_org()  # deterministic: the scenario's numbers depend on it
    levels = Counter(u.level for u in org.units)
    assert [lvl for lvl in LEVELS if levels[lvl]] == LEVELS and levels["province"] == 1
    assert 200 <= len(org.people) <= 500
    names = [p.name for p in org.people]
    assert len(set(names)) == len(names)
    assert all(all("\u4e00" <= ch <= "\u9fff" for ch in n) and 2 <= len(n) <= 3 for n in names)
    for unit in org.units:
        head, deputy = org.leaders(unit.id)
        assert head.leader and deputy.leader and org.staff(unit.id)
    village = org.at_level("village")[0]
    assert [u.level for u in org.chain_up(village.id)] == LEVELS[::-1]


def test_sync_lines_list_parents_before_children_and_members_after_units() -> None:
    seen: set[str] = set()
    ops = []
    for line in org_lines(build_org()):
        ops.append(line["op"])
        if line["op"] == "unit":
            assert line.get("parent") is None or line["parent"] in seen
            seen.add(str(line["id"]))
        else:
            units = line["units"]
            assert isinstance(units, list) and len(units) == 1 and units[0]["unit"] in seen
    assert ops == sorted(ops, key=lambda op: op != "unit")
