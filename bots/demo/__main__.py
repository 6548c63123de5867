"""``python -m bots.demo [run | scenario [--quick] | token USER | watch USER]``.

* ``run`` (the default; ``make demo``): start the world - server, bots,
  simulated business systems, the sample org - print what to open or run,
  send a realistic event every few seconds, until Ctrl-C.
* ``scenario``: start the same world in a temporary directory, drive users
  through every flow over real WebSockets, print the summary table, exit 0
  only if every flow completed.
* ``token USER`` / ``watch USER``: against a running ``run``, print a user
  token, or connect as that user and print each card as it arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bots.demo.flows import FlowResult, flows
from bots.demo.world import STATE_FILE, DemoError, DemoWorld, check_alive, start_world, stop_world
from imserver_sdk import BusinessClient, Client

DEFAULT_DIR = Path("data-demo")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bots.demo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="start the demo world and keep it running (Ctrl-C stops)")
    run.add_argument("--data-dir", type=Path, default=DEFAULT_DIR, help="wiped at start")
    run.add_argument("--every", type=float, default=5.0, help="seconds between live events")
    sc = sub.add_parser("scenario", help="drive every flow and print the summary table")
    sc.add_argument("--quick", action="store_true", help="one case of each kind (CI-sized)")
    sc.add_argument("--json", type=Path, help="also write the summary as JSON here")
    sc.add_argument("--data-dir", type=Path, help="keep the world here (default: a temp dir)")
    for name, what in (("token", "print a token for USER"), ("watch", "print USER's cards")):
        t = sub.add_parser(name, help=f"{what} (against a running `run`)")
        t.add_argument("user")
        t.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    args = p.parse_args(argv)
    try:
        if args.command == "scenario":
            return asyncio.run(scenario(args.quick, args.json, args.data_dir))
        if args.command in ("token", "watch"):
            return asyncio.run(user_command(args.command, args.user, args.data_dir))
        data_dir = getattr(args, "data_dir", DEFAULT_DIR)
        return asyncio.run(run_forever(data_dir, getattr(args, "every", 5.0)))
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1


async def run_forever(data_dir: Path, every_s: float) -> int:
    """``make demo``: the world, the live events, the instructions; until a signal."""
    shutil.rmtree(data_dir, ignore_errors=True)
    print("starting imserver, the bots and the business systems ...", flush=True)
    world = await start_world(data_dir, list(flows().values()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(_live(world, name, every_s)) for name in world.contexts]
    try:
        print(instructions(world, data_dir), flush=True)
        while not stop.is_set():
            check_alive(world)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stop_world(world)
        print("demo stopped", flush=True)
    return 0


async def _live(world: DemoWorld, name: str, every_s: float) -> None:
    """Send the flow's realistic events on a timer; print one line per event."""
    ctx = world.contexts[name]
    assert ctx.system is not None
    events = ctx.flow.live_events(world.org, random.Random())
    while True:
        await asyncio.sleep(every_s)
        event = next(events)
        try:
            status, answer = await ctx.system.send_event(world.events_url(name), event)
        except OSError as e:
            print(f"[{name}] could not reach the bot: {e}", flush=True)
            continue
        data = event.get("data", {})
        units = [data["unit"]] if "unit" in data else data.get("units", [])
        who = ", ".join(data.get("approvers") or [u["name"] for u in units])
        print(
            f"[{name}] {event['event_id']} {data.get('title', '')} → {who}: {status} "
            f"{answer.get('state', answer.get('error'))}",
            flush=True,
        )


def instructions(world: DemoWorld, data_dir: Path) -> str:
    org = world.org
    flows, admin = ", ".join(world.contexts), f"{world.http_url}/admin/v1/units/jx?depth=2"
    township = org.at_level("township")[0]  # the live events keep reaching its head
    head = org.leaders(township.id)[0]
    py = _interpreter()
    return f"""
imserver demo is running: {len(org.units)} units, {len(org.people)} people, flows {flows}

  server health   {world.http_url}/healthz      metrics {world.http_url}/metrics
  WebSocket       {world.ws_url}
  bots health     {world.bots_url}/healthz
  admin API key   {world.admin_key}   (curl -H 'Authorization: Bearer <key>' {admin})
  logs, config    {data_dir}/imserver.log, {data_dir}/bots.log, {data_dir}/*.toml

Watch a person's cards arrive ({head.name}, {head.title} of {township.name}):
  {py} -m bots.demo watch {head.user} --data-dir {data_dir}
A token for your own SDK client (imserver_sdk.Client({world.ws_url!r}, token)):
  {py} -m bots.demo token {head.user} --data-dir {data_dir}
Drive every flow once and print the summary:  {py} -m bots.demo scenario --quick

Ctrl-C stops everything.
"""


def _interpreter() -> str:
    """This interpreter, as a user at the same place can type it: ``make demo`` runs the
    virtualenv's python, and a bare ``python`` there may lack the SDK and aiohttp."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return str(exe)


async def user_command(command: str, user: str, data_dir: Path) -> int:
    """``token`` / ``watch`` against the world a ``run`` left in ``data_dir``."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except OSError:
        raise DemoError(f"no running demo in {data_dir} (start one with `make demo`)") from None
    async with BusinessClient(
        state["http_url"], state["identity_app"], state["identity_secret"]
    ) as idp:

        async def token() -> str:
            answer = await idp.request(
                "POST", "/api/v1/apps/tokens", {"user": user, "device": "cli"}
            )
            return str(answer["access_token"])

        if command == "token":
            print(await token())
            return 0
        async with Client(state["ws_url"], token) as c:
            print(f"connected as {user}; waiting for cards (Ctrl-C stops)", flush=True)
            async for ev in c.events():
                _print_card_event(ev.name, ev.data)
    return 0


def _print_card_event(name: str, data: dict[str, Any]) -> None:
    view = (
        data.get("body", {}).get("card") if name == "message" else data if name == "card" else None
    )
    if not isinstance(view, dict) or "card_id" not in view:
        return
    status = view.get("status") or {}
    print(
        f"{time.strftime('%H:%M:%S')} {view.get('title')}  [{view.get('state')}] "
        f"{status.get('text', '')}  actionable_by={view.get('actionable_by')}  "
        f"card_id={view['card_id']}",
        flush=True,
    )


async def scenario(quick: bool, json_path: Path | None, data_dir: Path | None) -> int:
    """Every flow's scripted steps in one fresh world; the summary table; 0 if all completed."""
    tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="imserver-demo-")
    root = data_dir or Path(tmp.name if tmp else ".")
    started = time.monotonic()
    results: dict[str, FlowResult] = {}
    try:
        world = await start_world(root, list(flows().values()))
        try:
            for name, ctx in world.contexts.items():
                try:
                    results[name] = await ctx.flow.scenario(world, ctx, quick)
                except (TimeoutError, OSError, RuntimeError) as e:
                    results[name] = FlowResult(problems=[f"stopped: {type(e).__name__}: {e}"])
                check_alive(world)
        finally:
            await stop_world(world)
    finally:
        if tmp is not None:
            tmp.cleanup()
    elapsed = time.monotonic() - started
    print(summary_table(results, elapsed))
    if json_path is not None:
        doc = {
            n: {"ok": r.ok, "counters": r.counters, "problems": r.problems}
            for n, r in results.items()
        }
        summary = {"flows": doc, "elapsed_s": round(elapsed, 2)}
        json_path.write_text(json.dumps(summary, indent=2))  # noqa: ASYNC240 - once, at the end
    failed = [n for n, r in results.items() if not r.ok]
    if failed:
        print(f"demo scenario FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("demo scenario completed: every flow finished")
    return 0


LABELS = {
    "requests": "requests sent",
    "dispatched": "cases dispatched",
    "tasks": "tasks issued",
    "sub_tasks": "sub-task cards (one per unit)",
    "cards_held": "cards delivered (holders)",
    "phone_masked": "citizen's phone masked (no pii:read)",
    "decisions": "decisions clicked",
    "approved": "approvals decided: approved",
    "rejected": "approvals decided: rejected",
    "withdrawn": "withdrawn (card closed)",
    "claimed": "cases claimed (签收)",
    "transferred": "cases transferred (转办)",
    "returned": "cases returned (退回)",
    "closed": "cases closed (办结)",
    "overdue": "cases overdue",
    "escalated": "cases escalated to the leader (督办)",
    "progress_reports": "progress reported (进展)",
    "units_done": "units done (办结)",
    "units_overdue": "sub-tasks marked overdue",
    "dinged": "overdue units DINGed",
    "units_escalated": "sub-tasks escalated to the unit's leader (督办)",
    "aggregates_all_done": "issuer's aggregate reached 全部办结",
    "holders_saw_final": "holders saw the final state",
    "holders_saw_outcome": "holders saw each outcome",
    "forwarded": "callbacks forwarded to the business system",
    "forward_repeats": "forward repeats (dropped by Idempotency-Key)",
}


def summary_table(results: dict[str, FlowResult], elapsed_s: float) -> str:
    rows = [("flow", "what", "count")]
    for name, r in results.items():
        order = list(LABELS)
        for key, value in sorted(r.counters.items(), key=lambda kv: _rank(order, kv[0])):
            rows.append((name, LABELS.get(key, key.replace("_", " ")), str(value)))
        rows.append((name, "result", "ok" if r.ok else "FAILED"))
        rows += [(name, "problem", p) for p in r.problems]
    widths = [max(_width(row[i]) for row in rows) for i in range(2)]
    out = [f"\nsummary ({elapsed_s:.1f} s)"]
    for i, (a, b, c) in enumerate(rows):
        out.append(f"  {_pad(a, widths[0])}  {_pad(b, widths[1])}  {c}")
        if i == 0:
            out.append("  " + "-" * (widths[0] + widths[1] + 10))
    return "\n".join(out)


def _rank(order: list[str], key: str) -> int:
    return order.index(key) if key in order else len(order)


def _width(s: str) -> int:
    """Display width: a CJK character takes two columns."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in s)


def _pad(s: str, width: int) -> str:
    return s + " " * (width - _width(s))


if __name__ == "__main__":
    raise SystemExit(main())
