"""bots: business events/s a bot turns into delivered cards, event → card p99 at 1,000 holders.

The world is the deployment of docs/bots.md, every part a real process on
loopback: imserver (``python -m imserver serve``), the bot runtime
(``python -m bots run``) running the OA bot, a load-generator process
holding the H holders' WebSockets (default 1,000), and the stand-in OA
system in this process, which POSTs signed events to the bot's webhook at
``--rate`` events/s (open loop: the schedule does not wait for answers).

Each event is a 公文传阅: a county document circulated to all H staff and
decided by any of three leaders (``mode: any_leader``). The OA bot caps
``cc`` at 100 people, so the benchmark runs it as :class:`CirculationBot`,
the OA bot with a ``readers`` list added to the card's recipients - the
card, the checks, the outbox and the push are the OA bot's own.

Timestamps: the event's send time (``time.time_ns()``) is part of its
``event_id`` and so of the card's ``out_track_id`` (``ev-<event_id>``);
each holder records when the card message arrives. Reported: event → card
at a holder p50/p99/max over every (event, holder), event → card at the
last holder per event, the webhook's answer time, and **delivered events/s**
(events whose card reached every holder, over first send → last delivery).
Target (the issue): event → card p99 ≤ 1 s at 100 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.common import (
    CDF_GRID,
    REPO,
    Progress,
    cpu_between,
    cpu_sample,
    latency_summary,
    plan_pinning,
)
from benchmarks.plotting import log_axis, pyplot
from benchmarks.scenarios import pick
from benchmarks.servers import (
    SUBPROTOCOL,
    free_port,
    provision_imserver,
    start_imserver,
    stop,
    workspace,
)
from benchmarks.workers import Worker, wait_connected
from bots.oa import OABot
from bots.runtime import BotEvent

DESCRIPTION = "OA bot: signed events → cards at 1,000 holders: delivered events/s, event → card p99"
TARGET_P99_MS = 1000.0
TARGET_RATE = 100.0
TRACK = b'"ev-bn'  # the out_track_id of a benchmark card: ev-bn<6 digits>-<19-digit send ns>
LEADERS = ["lead0", "lead1", "lead2"]


class CirculationBot(OABot):
    """The OA bot, with ``data.readers``: a document circulated beyond the 100-person cc."""

    def on_event(self, event: BotEvent) -> Any:
        readers = [str(r) for r in event.data.get("readers", [])]
        data = {k: v for k, v in event.data.items() if k != "readers"}
        result: Any = super().on_event(dataclasses.replace(event, data=data))

        def widen(push: Any) -> Any:
            users = tuple(push.users) + tuple(r for r in readers if r not in push.users)
            return dataclasses.replace(push, users=users)

        if hasattr(result, "cards"):  # a runtime whose bots return Effects
            return dataclasses.replace(result, cards=tuple(widen(c) for c in result.cards))
        return widen(result) if hasattr(result, "users") else result


class Holders(loadgen.Agent):
    """The H holders: per card message, (arrival - event send time) in µs."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.clients = [HolderClient(self, c.index, c.user) for c in self.clients]
        self.lat_us = array("q")
        self.per_event: dict[int, list[int]] = {}  # n → [arrivals, last arrival ns, send ns]

    def on_card(self, payload: bytes, j: int, now_ns: int) -> None:
        n, sent = int(payload[j + 6 : j + 12]), int(payload[j + 13 : j + 32])
        self.lat_us.append((now_ns - sent) // 1000)
        row = self.per_event.setdefault(n, [0, 0, sent])
        row[0] += 1
        row[1] = max(row[1], now_ns)

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        if msg[0] == "delivered":
            return sum(1 for row in self.per_event.values() if row[0] >= len(self.clients))
        if msg[0] == "collect":
            return {"lat_us": self.lat_us.tobytes(), "per_event": self.per_event}
        return await super().handle(msg)


class HolderClient(loadgen.Client):
    """A holder: card messages take a fast path (no JSON parse) to :meth:`Holders.on_card`."""

    __slots__ = ()

    def on_message(self, payload: bytes, now_ns: int) -> None:
        j = payload.find(TRACK)
        if j >= 0 and b'"message"' in payload[:120]:
            assert isinstance(self.agent, Holders)
            self.agent.on_card(payload, j, now_ns)
            return
        super().on_message(payload, now_ns)


def holders_main(conn: Connection, spec: dict[str, Any]) -> None:
    """The load generator's entry point, with the holders' agent registered first."""
    loadgen.AGENTS.setdefault("bot_holders", Holders)
    loadgen.worker_main(conn, spec)


class HoldersWorker(Worker):
    """A :class:`Worker` whose process runs :func:`holders_main`."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        parent, child = ctx.Pipe()
        self._conn = parent
        self.proc = ctx.Process(target=holders_main, args=(child, spec), name=name, daemon=True)
        self.proc.start()
        child.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--holders", type=int, help="holders of every card (default 1000; quick 100)")
    p.add_argument("--rate", type=float, help="events/s sent to the bot (default 100; quick 20)")
    p.add_argument("--duration", type=float, help="seconds of sending (default 10; quick 2)")
    p.add_argument("--drain", type=float, default=20.0, help="seconds to wait for the last cards")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    q = args.quick
    cfg = {
        "holders": pick(args.holders, 1000, 100, q),
        "rate": pick(args.rate, TARGET_RATE, 20.0, q),
        "duration_s": pick(args.duration, 10.0, 2.0, q),
        "drain_s": args.drain,
        "synchronous": args.synchronous,
        "card": "公文传阅 (OA any_leader of 3, H readers)",
    }
    pinning = plan_pinning(not args.no_pin)
    holders = [f"h{i:05d}" for i in range(cfg["holders"])]
    admin_key = secrets.token_hex(24)
    with workspace("bots", args.store, args.bus) as (workdir, backends):
        progress.update("starting imserver")
        prov, ws_port, http_port = provision_imserver(
            workdir,
            holders + LEADERS,
            synchronous=cfg["synchronous"],
            max_group_members=1000,
            admin_api_key=admin_key,
            backends=backends,
        )
        server = start_imserver(workdir, prov.config_path, ws_port, http_port, pinning)
        bot_proc: subprocess.Popen[bytes] | None = None
        worker: Worker | None = None
        try:
            progress.update("starting the OA bot", "python -m bots run")
            bot_proc, bot_url, event_secret = start_bot(workdir, http_port, admin_key)
            worker = HoldersWorker("holders", holder_spec(ws_port, holders, prov.tokens, pinning))
            wait_connected(
                [worker], lambda up, n: progress.update("holders connecting", f"{up}/{n}"), 120
            )
            server_before, bot_before = cpu_sample(server.pid), cpu_sample(bot_proc.pid)
            sent = asyncio.run(
                send_events(bot_url, event_secret, holders, cfg, worker, progress, server)
            )
            server_after, bot_after = cpu_sample(server.pid), cpu_sample(bot_proc.pid)
            rows = worker.call(("collect",), timeout=120)
        finally:
            if worker is not None:
                worker.stop()
            if bot_proc is not None:
                bot_proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    bot_proc.wait(10)
                if bot_proc.poll() is None:
                    bot_proc.kill()
            stop(server)
    cfg["pinning"] = {**pinning.as_json(), "server_pinned": server.pinned}
    cpu = (server_before, server_after, bot_before, bot_after)
    return report(cfg, sent, rows, backends.as_json(), cpu, progress)


def holder_spec(
    ws_port: int, holders: list[str], tokens: dict[str, str], pinning: Any
) -> dict[str, Any]:
    return {
        "kind": "bot_holders",
        "port": ws_port,
        "users": [(u, tokens[u]) for u in holders],
        "cpus": sorted(pinning.load),
        "max_lifetime_s": 900,
        "subprotocol": SUBPROTOCOL,
        "connect_concurrency": 50,
        "timeout_s": 30.0,
    }


def start_bot(workdir: Path, http_port: int, admin_key: str) -> tuple[Any, str, str]:
    """``python -m bots run`` with the circulation bot, its app registered; its events URL."""
    port, app_secret, event_secret = (
        free_port(),
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(32),
    )
    server_url = f"http://127.0.0.1:{http_port}"
    config = workdir / "bots.toml"
    config.write_text(
        f'[runtime]\nserver_url = "{server_url}"\nport = {port}\n'
        f'store = "{workdir / "bots.sqlite3"}"\ninline_push_timeout_s = 10.0\n'
        f'[[bot]]\nname = "oa"\nclass = "benchmarks.scenarios.bots:CirculationBot"\n'
        f'app_id = "oa"\napp_secret = "{app_secret}"\nevent_secret = "{event_secret}"\n'
        f'forward_url = "http://127.0.0.1:9/unused"\nmax_event_bytes = 1048576\n'
    )
    body = {
        "app_id": "oa",
        "secret": app_secret,
        "scope": ["*"],
        "name": "统建 OA",
        "callback_url": f"http://127.0.0.1:{port}/bots/oa/callback",
    }
    req = urllib.request.Request(
        f"{server_url}/admin/v1/apps",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201
    log = open(workdir / "bots.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "bots", "run", "--config", str(config), "--log-level", "WARNING"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"the bot exited with {proc.returncode}; see {workdir}/bots.log")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r,
        ):
            if r.status == 200:
                return proc, f"http://127.0.0.1:{port}/bots/oa/events", event_secret
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the bot did not answer /healthz in 15 s")


def event_body(n: int, holders: list[str]) -> bytes:
    """One 公文传阅 event, its send time in its id (read back by the holders)."""
    eid = f"bn{n:06d}-{time.time_ns()}"
    data = {
        "request_id": f"OA-{eid}",
        "kind": "document",
        "title": "关于做好安全生产工作的通知",
        "applicant": "县政府办",
        "mode": "any_leader",
        "approvers": LEADERS,
        "readers": holders,
        "fields": [{"label": "密级", "value": "公开"}],
        "summary": "请各单位认真阅读并抓好落实。",
    }
    return json.dumps({"event_id": eid, "type": "oa.request", "data": data}).encode()


async def send_events(
    url: str,
    secret: str,
    holders: list[str],
    cfg: dict[str, Any],
    worker: Worker,
    progress: Progress,
    server: Any,
) -> dict[str, Any]:
    """Send on schedule (open loop), then wait until every card reached every holder."""
    import aiohttp

    from imserver_sdk import sign_request

    total = max(1, round(cfg["rate"] * cfg["duration_s"]))
    answers: dict[int, int] = {}
    answer_us = array("q")
    errors: list[str] = []

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        body = event_body(n, holders)
        headers = {**sign_request("oa-system", secret, body), "Content-Type": "application/json"}
        t0 = time.perf_counter_ns()
        try:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                answers[r.status] = answers.get(r.status, 0) + 1
        except (aiohttp.ClientError, OSError) as e:
            errors.append(f"{n}: {type(e).__name__}: {e}")
        answer_us.append((time.perf_counter_ns() - t0) // 1000)

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        first_ns, start = time.time_ns(), time.monotonic()
        tasks = []
        for n in range(total):
            delay = start + n / cfg["rate"] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, n)))
            if n % 20 == 0:
                progress.update("sending events", f"{n}/{total}")
        send_s = time.monotonic() - start
        await asyncio.gather(*tasks)
    deadline = time.monotonic() + cfg["drain_s"]
    delivered = 0
    while time.monotonic() < deadline:
        delivered = await asyncio.to_thread(worker.call, ("delivered",))
        progress.update("cards reaching every holder", f"{delivered}/{total}")
        if delivered >= total:
            break
        server.check_alive()
        await asyncio.sleep(0.2)
    return {
        "total": total,
        "answers": answers,
        "answer_us": answer_us.tobytes(),
        "errors": errors,
        "first_ns": first_ns,
        "send_s": send_s,
    }


def report(
    cfg: dict[str, Any],
    sent: dict[str, Any],
    rows: dict[str, Any],
    backends: Any,
    cpu: tuple[Any, Any, Any, Any],
    progress: Progress,
) -> dict[str, Any]:
    """The result document: every (event, holder) latency, per-event completion, CPU."""
    sb, sa, bb, ba = cpu
    lat = array("q")
    lat.frombytes(rows["lat_us"])
    answer = array("q")
    answer.frombytes(sent["answer_us"])
    per_event: dict[int, list[int]] = rows["per_event"]
    full = [r for r in per_event.values() if r[0] >= cfg["holders"]]
    last_us = array("q", [(r[1] - r[2]) // 1000 for r in full])
    span_s = (max((r[1] for r in full), default=sent["first_ns"]) - sent["first_ns"]) / 1e9
    latency, cdf = latency_summary(lat)
    last, last_cdf = latency_summary(last_us)
    answered, answer_cdf = latency_summary(answer)
    delivered_per_s = round(len(full) / span_s, 1) if span_s > 0 else 0.0
    offered = round(sent["total"] / max(sent["send_s"], 1e-9), 1)
    met = (
        latency["p99_ms"] <= TARGET_P99_MS
        and len(full) == sent["total"]
        and cfg["rate"] >= TARGET_RATE
        and cfg["holders"] >= 1000
    )
    warnings = [f"{len(sent['errors'])} events not answered, e.g. {sent['errors'][:1]}"] * bool(
        sent["errors"]
    )
    if len(full) < sent["total"]:
        warnings.append(f"only {len(full)} of {sent['total']} cards reached every holder")
    for w in warnings:
        progress.note(w)
    metrics = {
        "config": cfg,
        "backends": backends,
        "events_sent": sent["total"],
        "offered_events_per_s": offered,
        "webhook_answers": {str(k): v for k, v in sent["answers"].items()},
        "events_delivered_to_all": len(full),
        "card_deliveries": len(lat),
        "delivered_events_per_s": delivered_per_s,
        "event_to_card": latency,
        "event_to_card_at_last_holder": last,
        "webhook_answer": answered,
        "server_cpu": cpu_between(sb, sa),
        "bot_cpu": cpu_between(bb, ba),
        "warnings": warnings,
    }
    summary = {
        "holders": cfg["holders"],
        "rate": cfg["rate"],
        "events": sent["total"],
        "events_delivered_to_all": len(full),
        "delivered_events_per_s": delivered_per_s,
        "card_deliveries_per_s": round(len(lat) / span_s, 1) if span_s > 0 else 0.0,
        "event_to_card_p50_ms": latency["p50_ms"],
        "event_to_card_p99_ms": latency["p99_ms"],
        "event_to_last_holder_p99_ms": last["p99_ms"],
        "webhook_answer_p99_ms": answered["p99_ms"],
        "server_cpu_utilisation": metrics["server_cpu"]["utilisation"],
        "bot_cpu_utilisation": metrics["bot_cpu"]["utilisation"],
        "targets": {
            "event_to_card_p99_ms": {
                "target": TARGET_P99_MS,
                "measured": latency["p99_ms"],
                "met": met,
                "rate": cfg["rate"],
                "target_rate": TARGET_RATE,
                "holders": cfg["holders"],
            }
        },
    }
    if warnings:
        summary["warnings"] = len(warnings)
    series = {
        "cdf_grid": CDF_GRID,
        "cdf_ms": {"holder": cdf, "last": last_cdf, "answer": answer_cdf},
    }
    return {"metrics": metrics, "series": series, "summary": summary}


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    m, s = result["metrics"], result["series"]
    fig, ax = plt.subplots(figsize=(9, 5))
    grid = [g / 100 for g in s["cdf_grid"]]
    labels: dict[str, tuple[str, str]] = {
        "holder": ("event → card at a holder", "event_to_card"),
        "last": ("event → card at the last holder", "event_to_card_at_last_holder"),
        "answer": ("webhook answer (bot → 201)", "webhook_answer"),
    }
    for key, (label, metric) in labels.items():
        lat = m[metric]
        ax.plot(
            s["cdf_ms"][key], grid, label=f"{label} (p50 {lat['p50_ms']:g}, p99 {lat['p99_ms']:g})"
        )
    ax.axvline(TARGET_P99_MS, color="tab:red", ls=":", label=f"target p99 {TARGET_P99_MS:g} ms")
    log_axis(ax)
    ax.set_xlabel("ms after the OA system sent the event")
    ax.set_ylabel("fraction")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    cfg = m["config"]
    ax.set_title(
        f"bots: {m['events_sent']} events at {cfg['rate']:g}/s → {cfg['holders']} holders each; "
        f"{m['delivered_events_per_s']:g} delivered events/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
