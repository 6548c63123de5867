"""chat: P pairs of users in 1:1 conversations, messages at a total rate.

Each message is a ``send`` with ``to`` (the 1:1 path: membership of the
``dm:`` conversation, DLP check, the store's append with group commit —
SQLite, or PostgreSQL with ``--store postgres`` — publish to both users).
Measured per message: send → ack (the ``result``, sent only after the
message is durably stored) and send → delivered (the ``message``
event at the peer's connection). Both ends of a pair live in the same
load-generator process; directions alternate.
"""

from __future__ import annotations

import argparse
import time
from array import array
from pathlib import Path
from typing import Any

from benchmarks.backends import BackendCpu, Backends
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
from benchmarks.workers import Worker, WorkerError, split, start_worker, wait_connected

DESCRIPTION = "P pairs in 1:1 conversations at a total rate; send→ack and send→delivered latency"
WARMUP_PHASE = 0
#: The issue's target for PostgreSQL: send → ack p99 at 1,000 msg/s.
PG_TARGET_ACK_P99_MS = 20.0
TARGET_RATE = 1000.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pairs", type=int, help="1:1 pairs, 2 connections each (default 100; quick 10)"
    )
    p.add_argument(
        "--rate", type=float, help="total messages/s over all pairs (default 1000; quick 100)"
    )
    p.add_argument("--duration", type=float, help="measured seconds (default 15; quick 3)")
    p.add_argument("--size", type=int, default=200, help="message text bytes (default 200)")
    p.add_argument("--procs", type=int, help="load-generator processes (default 2; quick 1)")
    p.add_argument(
        "--drain", type=float, help="max seconds to wait for stragglers (default 10; quick 5)"
    )


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    q = args.quick
    pairs = pick(args.pairs, 100, 10, q)
    cfg = {
        "pairs": pairs,
        "rate": pick(args.rate, 1000.0, 100.0, q),
        "duration_s": pick(args.duration, 15.0, 3.0, q),
        "size": args.size,
        "procs": pick(args.procs, 2, 1, q),
        "drain_s": pick(args.drain, 10.0, 5.0, q),
        "synchronous": args.synchronous,
        "store": args.store,
        "bus": args.bus,
    }
    pinning = plan_pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        progress.note("CPU pinning not available; server and load share CPUs (noisier)")
    users = [f"u{i:05d}" for i in range(2 * pairs)]
    # Pairs never straddle processes: split whole pairs.
    pair_list = [users[k : k + 2] for k in range(0, len(users), 2)]
    lifetime = 180 + cfg["duration_s"] * 3 + cfg["drain_s"]
    with workspace("chat", args.store, args.bus) as (workdir, backends):
        progress.update("starting imserver", f"store {backends.store}, bus {backends.bus}")
        prov, ws_port, http_port = provision_imserver(
            workdir,
            users,
            synchronous=cfg["synchronous"],
            max_group_members=1000,
            backends=backends,
        )
        server = start_imserver(workdir, prov.config_path, ws_port, http_port, pinning)
        workers: list[Worker] = []
        try:
            for i, chunk in enumerate(split(pair_list, cfg["procs"])):
                flat = [(u, prov.tokens[u]) for pair in chunk for u in pair]
                workers.append(
                    start_worker(
                        f"chat-{i}",
                        "pairs",
                        port=server.ws_port,
                        users=flat,
                        pinning=pinning,
                        max_lifetime_s=lifetime,
                        subprotocol=SUBPROTOCOL,
                    )
                )
            wait_connected(
                workers,
                lambda up, total: progress.update("connecting", f"{up}/{total}"),
                timeout=120,
            )
            shares = [len(w_pairs) / pairs for w_pairs in split(pair_list, cfg["procs"])]
            # Warm-up: one message per pair creates every dm: conversation (not measured).
            progress.update("warm-up: creating the 1:1 conversations")
            _phase(WARMUP_PHASE, cfg, 1.0, server, workers, shares, progress, warmup_pairs=pairs)
            point = _phase(
                1, cfg, cfg["duration_s"], server, workers, shares, progress, backends=backends
            )
        finally:
            for w in workers:
                w.stop()
            stop(server)
    metrics = {
        "config": cfg,
        "pinning": pinning.as_json(),
        "pinned": server.pinned,
        "backends": backends.as_json(),
        **{k: v for k, v in point.items() if not k.endswith("_cdf_ms")},
    }
    series = {
        "cdf_grid": CDF_GRID,
        "ack_cdf_ms": point["ack_cdf_ms"],
        "delivery_cdf_ms": point["delivery_cdf_ms"],
    }
    summary = {
        "pairs": pairs,
        "rate": cfg["rate"],
        "sent": point["sent"],
        "deliveries": point["delivered"],
        "msgs_per_s": point["msgs_per_s"],
        "ack_p50_ms": point["ack_latency"]["p50_ms"],
        "ack_p99_ms": point["ack_latency"]["p99_ms"],
        "delivery_p50_ms": point["delivery_latency"]["p50_ms"],
        "delivery_p99_ms": point["delivery_latency"]["p99_ms"],
        "cpu_us_per_message": point["cpu_us_per_message"],
        "server_cpu_utilisation": point["server_cpu"]["utilisation"],
        "store": backends.store,
        "bus": backends.bus,
    }
    if "postgres_cpu" in point:
        summary["postgres_cpu_us_per_message"] = point["postgres_cpu_us_per_message"]
    if backends.store == "postgres":
        summary["targets"] = {"ack_p99_ms": _ack_target(point, cfg["rate"])}
    if point["warnings"]:
        summary["warnings"] = len(point["warnings"])
        for w in point["warnings"]:
            progress.note(w)
    return {"metrics": metrics, "series": series, "summary": summary}


def _ack_target(point: dict[str, Any], rate: float) -> dict[str, Any]:
    """The PostgreSQL send → ack target: met only at its rate, with every send acked."""
    measured = point["ack_latency"]["p99_ms"]
    return {
        "target": PG_TARGET_ACK_P99_MS,
        "measured": measured,
        "met": measured <= PG_TARGET_ACK_P99_MS
        and rate >= TARGET_RATE
        and point["acked"] == point["sent"] > 0,
        "rate": rate,
        "target_rate": TARGET_RATE,
    }


def _phase(
    phase: int,
    cfg: dict[str, Any],
    duration: float,
    server: Any,
    workers: list[Worker],
    shares: list[float],
    progress: Progress,
    warmup_pairs: int = 0,
    backends: Backends | None = None,
) -> dict[str, Any]:
    label = (
        "warm-up" if phase == WARMUP_PHASE else f"{cfg['rate']:g} msg/s over {cfg['pairs']} pairs"
    )
    db = BackendCpu(backends.database if backends else "")
    db.start()
    server_before = cpu_sample(server.pid)
    load_before = [cpu_sample(w.pid) for w in workers]
    for w, share in zip(workers, shares, strict=True):
        rate = (warmup_pairs or cfg["rate"]) * share
        w.send(("phase", phase, rate, duration, cfg["size"], cfg["drain_s"]))
    t0 = time.monotonic()
    limit = duration * 3 + cfg["drain_s"] + 60
    answers: list[dict[str, Any] | None] = [None] * len(workers)
    while any(a is None for a in answers):
        for i, w in enumerate(workers):
            if answers[i] is None and w.poll(0.05):
                answers[i] = w.receive()
        server.check_alive()
        db.poll()
        elapsed = time.monotonic() - t0
        progress.update(
            label,
            f"{min(elapsed, duration):.0f}/{duration:g}s"
            + (" draining" if elapsed > duration else ""),
        )
        if elapsed > limit:
            raise WorkerError(f"chat phase {phase} did not finish in {limit:.0f}s")
    server_after = cpu_sample(server.pid)
    load_after = [cpu_sample(w.pid) for w in workers]
    db_cpu = db.result()
    if phase == WARMUP_PHASE:
        return {}
    done = [a for a in answers if a is not None]
    acks, lat = array("q"), array("q")
    for a in done:
        acks.frombytes(a["ack_lat_us"])
        lat.frombytes(a["delivery_lat_us"])
    sent = sum(a["sent"] for a in done)
    delivered = sum(a["delivered"] for a in done)
    echoes = sum(a["echo"] for a in done)
    errors: dict[str, int] = {}
    closes: dict[str, int] = {}
    for a in done:
        for k, v in a["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in a["closes"].items():
            closes[k] = closes.get(k, 0) + v
    first_ns = min(a["first_ns"] for a in done)
    last_ns = max(a["last_ns"] for a in done)
    span_s = max((last_ns - first_ns) / 1e9, 1e-9)
    server_cpu = cpu_between(server_before, server_after)
    load_cpu_s = sum(
        cpu_between(b, a)["cpu_s"] for b, a in zip(load_before, load_after, strict=True)
    )
    ack_summary, ack_cdf = latency_summary(acks)
    del_summary, del_cdf = latency_summary(lat)
    point: dict[str, Any] = {
        "sent": sent,
        "acked": len(acks),
        "delivered": delivered,
        "echoes": echoes,
        "delivered_fraction": round(delivered / sent, 5) if sent else 0.0,
        "msgs_per_s": round(delivered / span_s, 1),
        "send_rate_actual": round(sent / max(max(a["send_span_s"] for a in done), 1e-9), 1),
        "ack_latency": ack_summary,
        "delivery_latency": del_summary,
        "errors": errors,
        "closes": closes,
        "server_cpu": server_cpu,
        # Per message: its store append, the ack and two writes (peer + echo).
        "cpu_us_per_message": round(server_cpu["cpu_s"] * 1e6 / sent, 2) if sent else None,
        **_db_cpu(db_cpu, sent),
        "loadgen_cpu_s": round(load_cpu_s, 3),
        "loadgen_utilisation": round(load_cpu_s / max(server_cpu["wall_s"], 1e-9), 3),
        "ack_cdf_ms": ack_cdf,
        "delivery_cdf_ms": del_cdf,
    }
    warnings = []
    if point["delivered_fraction"] < 0.999:
        warnings.append(f"only {point['delivered_fraction']:.1%} delivered within the drain time")
    if errors:
        warnings.append(f"error answers: {errors}")
    if closes:
        warnings.append(f"connections closed: {closes}")
    if point["loadgen_utilisation"] > 0.85:
        warnings.append(
            f"load generator used {point['loadgen_utilisation']:.0%} CPU: may be the bottleneck"
        )
    point["warnings"] = warnings
    return point


def _db_cpu(used: dict[str, Any] | None, sent: int) -> dict[str, Any]:
    """The PostgreSQL backends' CPU in the phase: not in ``server_cpu``, not pinned."""
    if used is None:
        return {}
    return {
        "postgres_cpu": used,
        "postgres_cpu_us_per_message": round(used["cpu_s"] * 1e6 / sent, 2) if sent else None,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    m, s = result["metrics"], result["series"]
    cfg = m["config"]
    fig, ax = plt.subplots(figsize=(8, 5))
    grid = [g / 100 for g in s["cdf_grid"]]
    ack, dlv = m["ack_latency"], m["delivery_latency"]
    ax.plot(
        s["ack_cdf_ms"], grid, label=f"send → ack (p50 {ack['p50_ms']:g}, p99 {ack['p99_ms']:g} ms)"
    )
    ax.plot(
        s["delivery_cdf_ms"],
        grid,
        label=f"send → delivered (p50 {dlv['p50_ms']:g}, p99 {dlv['p99_ms']:g} ms)",
    )
    log_axis(ax)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of messages")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"chat: {cfg['pairs']} pairs, {cfg['rate']:g} msg/s total, {_engines(m)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _engines(metrics: dict[str, Any]) -> str:
    """The plot's words for the store and bus (results from before ``--store`` are SQLite)."""
    b = metrics.get("backends", {"store": "sqlite", "bus": "local"})
    if b["store"] == "postgres":
        sync = b.get("postgres_settings", {}).get("synchronous_commit", "?")
        words = f"postgres synchronous_commit={sync}"
    else:
        words = f"sqlite synchronous={metrics['config']['synchronous']}"
    return words + (", redis bus" if b["bus"] == "redis" else "")
