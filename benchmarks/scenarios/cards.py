"""cards: a card to A approvers (any-of), one approves, the business system answers.

One load-generator process holds the A approvers' connections (default 20)
and the stand-in business system: an aiohttp server on 127.0.0.1 whose
callback route is ``imserver_sdk.callback_handler`` (signature check, nonce
and action-id dedupe, exactly what a third-party app would run), registered
at start through ``POST /admin/v1/apps`` with scope ``["*"]``, and
``imserver_sdk.BusinessClient`` to push cards. Per card, one after another:

1. the app pushes a card (policy any-of, all A approvers as actors) and
   waits until every approver holds it (not timed as part of the click);
2. one approver (round-robin) sends ``card.act approve`` — **the click**;
3. the server stores the decision, sends the decided card to all A, and
   POSTs the signed callback — **callback received** at the app;
4. the app answers ``{"card_update": {"status": …}}``; the server applies it
   and sends the new version — **update seen by all A**.

Reported per card (p50/p99 over ``--cards``, after ``--warmup`` unrecorded
cards): click → act result, click → callback, click → decided card at all,
click → updated card at the first and at all approvers (headline), and
callback → updated at all. Target (the issue): click → update at all, p99
≤ 50 ms.
"""

from __future__ import annotations

import argparse
import secrets
import time
from array import array
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CDF_GRID,
    Progress,
    cpu_between,
    cpu_sample,
    latency_summary,
    plan_pinning,
)
from benchmarks.plotting import log_axis, pyplot
from benchmarks.scenarios import pick
from benchmarks.servers import SUBPROTOCOL, provision_imserver, start_imserver, stop, workspace
from benchmarks.workers import Worker, WorkerError, start_worker, wait_connected

DESCRIPTION = "card to A approvers, one approves, app answers the callback: click → update p99"
TARGET_P99_MS = 50.0
#: (key in the result, what it measures) in the order the plot and the README use.
STAGES = (
    ("ack", "click → act result"),
    ("callback", "click → callback at the app"),
    ("decided_all", "click → decided card at all"),
    ("updated_first", "click → updated card at the first"),
    ("updated_all", "click → updated card at all"),
    ("callback_to_updated_all", "callback → updated card at all"),
    ("deliver", "push → card at all (before the click)"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cards", type=int, help="measured cards (default 200; quick 20)")
    p.add_argument("--approvers", type=int, default=20, help="approvers per card (default 20)")
    p.add_argument(
        "--warmup", type=int, help="cards before the measured ones, not recorded (default 5)"
    )
    p.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds between one card's update and the next push (default 0)",
    )


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    q = args.quick
    cfg = {
        "cards": pick(args.cards, 200, 20, q),
        "approvers": args.approvers,
        "warmup": pick(args.warmup, 5, 2, q),
        "gap_s": args.gap,
        "policy": "any",
        "synchronous": args.synchronous,
    }
    pinning = plan_pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        progress.note("CPU pinning not available; server and load share CPUs (noisier)")
    users = [f"a{i:03d}" for i in range(cfg["approvers"])]
    admin_key = secrets.token_hex(24)
    total = cfg["cards"] + cfg["warmup"]
    lifetime = 180 + total * 2
    with workspace("cards", args.store, args.bus) as (workdir, backends):
        progress.update("starting imserver")
        prov, ws_port, http_port = provision_imserver(
            workdir,
            users,
            synchronous=cfg["synchronous"],
            max_group_members=1000,
            admin_api_key=admin_key,
            backends=backends,
        )
        server = start_imserver(workdir, prov.config_path, ws_port, http_port, pinning)
        workers: list[Worker] = []
        try:
            desk = start_worker(
                "cards",
                "cards",
                port=server.ws_port,
                users=[(u, prov.tokens[u]) for u in users],
                pinning=pinning,
                max_lifetime_s=lifetime,
                subprotocol=SUBPROTOCOL,
                extra={"http_port": http_port, "admin_api_key": admin_key},
            )
            workers.append(desk)
            progress.update("registering the app", "stub business system on 127.0.0.1")
            callback_url = desk.call(("setup",))
            wait_connected(
                workers,
                lambda up, n: progress.update("approvers connecting", f"{up}/{n}"),
                timeout=60,
            )
            server_before = cpu_sample(server.pid)
            load_before = cpu_sample(desk.pid)
            desk.call(("run", cfg["cards"], cfg["warmup"], cfg["gap_s"]))
            t0 = time.monotonic()
            limit = 60 + total * 3
            while True:
                st = desk.call(("progress",))
                progress.update("cards", f"{st['done']}/{st['total']}")
                if st["finished"]:
                    break
                server.check_alive()
                if time.monotonic() - t0 > limit:
                    raise WorkerError(f"only {st['done']} of {total} cards done in {limit:.0f}s")
                time.sleep(0.1)
            server_after = cpu_sample(server.pid)
            load_after = cpu_sample(desk.pid)
            rows = desk.call(("collect",))
        finally:
            for w in workers:
                w.stop()
            stop(server)
    samples: dict[str, array[int]] = {}
    for key, raw in rows.items():
        samples[key] = array("q")
        samples[key].frombytes(raw)
    measured = len(samples["updated_all"])
    latency: dict[str, Any] = {}
    cdfs: dict[str, list[float]] = {}
    for key, _ in STAGES:
        latency[key], cdfs[key] = latency_summary(samples[key])
    server_cpu = cpu_between(server_before, server_after)
    load_cpu = cpu_between(load_before, load_after)
    metrics: dict[str, Any] = {
        "config": cfg,
        "pinning": pinning.as_json(),
        "pinned": server.pinned,
        "backends": backends.as_json(),
        "callback_url": callback_url,
        "cards_measured": measured,
        "failures": st["failures"],
        "failure_count": st["failure_count"],
        "closes": st["closes"],
        "latency": latency,
        "target_p99_ms": TARGET_P99_MS,
        "server_cpu": server_cpu,
        # Per card: push (20 card messages), act, callback, update (each fanned out to A).
        "server_cpu_ms_per_card": round(server_cpu["cpu_s"] * 1e3 / total, 3),
        "loadgen_utilisation": load_cpu["utilisation"],
        "cards_per_s": round(total / max(server_cpu["wall_s"], 1e-9), 1),
    }
    warnings = []
    if st["failure_count"]:
        warnings.append(f"{st['failure_count']} cards failed, e.g. {st['failures'][:1]}")
    if st["closes"]:
        warnings.append(f"connections closed: {st['closes']}")
    if load_cpu["utilisation"] > 0.85:
        warnings.append(
            f"load process used {load_cpu['utilisation']:.0%} of a CPU: it may be the limit"
        )
    metrics["warnings"] = warnings
    u = latency["updated_all"]
    summary: dict[str, Any] = {
        "cards": measured,
        "approvers": cfg["approvers"],
        "click_to_updated_all_p50_ms": u["p50_ms"],
        "click_to_updated_all_p99_ms": u["p99_ms"],
        "click_to_callback_p50_ms": latency["callback"]["p50_ms"],
        "click_to_callback_p99_ms": latency["callback"]["p99_ms"],
        "callback_to_updated_all_p50_ms": latency["callback_to_updated_all"]["p50_ms"],
        "callback_to_updated_all_p99_ms": latency["callback_to_updated_all"]["p99_ms"],
        "click_to_ack_p50_ms": latency["ack"]["p50_ms"],
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": measured == cfg["cards"] and u["p99_ms"] <= TARGET_P99_MS,
        "server_cpu_ms_per_card": metrics["server_cpu_ms_per_card"],
    }
    if warnings:
        summary["warnings"] = len(warnings)
        for text in warnings:
            progress.note(text)
    series = {"cdf_grid": CDF_GRID, "cdf_ms": cdfs}
    return {"metrics": metrics, "series": series, "summary": summary}


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    m, s = result["metrics"], result["series"]
    cfg = m["config"]
    fig, (ax_cdf, ax_bar) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(3, 2))
    grid = [g / 100 for g in s["cdf_grid"]]
    for key, label in STAGES[:-1]:
        lat = m["latency"][key]
        ax_cdf.plot(
            s["cdf_ms"][key],
            grid,
            lw=2.2 if key == "updated_all" else 1.2,
            label=f"{label} (p50 {lat['p50_ms']:g}, p99 {lat['p99_ms']:g})",
        )
    ax_cdf.axvline(TARGET_P99_MS, color="tab:red", ls=":", label=f"target p99 {TARGET_P99_MS:g} ms")
    log_axis(ax_cdf)
    ax_cdf.set_xlabel("ms")
    ax_cdf.set_ylabel("fraction of cards")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(loc="lower right", fontsize=7.5)
    ax_cdf.set_title(f"{m['cards_measured']} cards, {cfg['approvers']} approvers each")
    keys = ["ack", "callback", "decided_all", "updated_all"]
    labels = ["act\nresult", "callback\nat app", "decided\nat all", "updated\nat all"]
    p50 = [m["latency"][k]["p50_ms"] for k in keys]
    p99 = [m["latency"][k]["p99_ms"] for k in keys]
    xs = range(len(keys))
    ax_bar.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    bars = ax_bar.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    ax_bar.bar_label(bars, fmt="%.1f", fontsize=8)
    ax_bar.axhline(TARGET_P99_MS, color="tab:red", ls=":", label="target p99")
    ax_bar.set_xticks(list(xs), labels)
    ax_bar.set_ylabel("ms after the click")
    ax_bar.legend()
    ax_bar.set_title("click → …")
    fig.suptitle("cards: click → callback → card_update seen by every approver")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
