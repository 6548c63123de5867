"""``governance report``: zombie, empty-shell and duplicate work groups."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from imserver.cli.context import (
    load,
    open_store,
)


def cmd_governance_report(args: argparse.Namespace) -> int:
    """Print the group governance report (JSON or CSV) for the whole tree or one unit."""
    from imserver.governance import classify, to_csv, to_json
    from imserver.http.governance_api import rules_from

    config = load(args.config)
    query = {
        k: str(v)
        for k, v in {
            "zombie_days": args.zombie_days,
            "empty_max_members": args.empty_max_members,
            "duplicate_threshold": args.duplicate_threshold,
            "min_age_days": args.min_age_days,
        }.items()
        if v is not None
    }
    rules = rules_from(query)

    async def run() -> str:
        store = open_store(config)
        await store.open()
        try:
            scope = None
            if args.unit:
                unit = await store.get_unit(args.unit)
                if unit is None:
                    raise SystemExit(f"error: no unit {args.unit!r}")
                scope = [unit.path]
            findings = classify(await store.group_stats(scope), int(time.time() * 1000), rules)
        finally:
            await store.close()
        if args.format == "csv":
            return to_csv(findings)
        return orjson.dumps(to_json(findings), option=orjson.OPT_INDENT_2).decode()

    sys.stdout.write(asyncio.run(run()) + "\n")
    return 0
