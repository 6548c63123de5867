"""store: messages persisted per second through the real store, in-process.

No sockets to imserver: ``append_message`` of the store ``--store`` names
(``SqliteStore`` on a temporary file, or ``PostgresStore`` on a throw-away
database of this machine's PostgreSQL) is called by many concurrent tasks
(as many in-flight sends as a busy server would have), so the store's group
commit gets to batch them. This isolates the store's ceiling from the
gateway's: if ``chat`` is slower than this, the time goes elsewhere. Each
append is the real one (duplicate check on ``client_msg_id``, membership
check, seq assignment, insert, read-cursor update), spread over 1:1
conversations.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
    install_uvloop_policy,
    latency_summary,
    pin_pid,
    plan_pinning,
)
from benchmarks.plotting import log_axis, pyplot
from benchmarks.scenarios import pick
from benchmarks.servers import workspace

DESCRIPTION = (
    "the store's append_message (SQLite or PostgreSQL) from many concurrent tasks;"
    " msgs/s and group-commit stats"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, help="messages to append (default 50000; quick 5000)")
    p.add_argument(
        "--concurrency", type=int, default=256, help="concurrent appending tasks (default 256)"
    )
    p.add_argument(
        "--convs", type=int, default=100, help="1:1 conversations written to (default 100)"
    )
    p.add_argument("--size", type=int, default=200, help="message text bytes (default 200)")
    p.add_argument(
        "--group-commit-max", type=int, default=512, help="store.group_commit_max (default 512)"
    )
    p.add_argument(
        "--pool-max",
        type=int,
        default=10,
        help="--store postgres: store.pool_max_size, connections the store may open (default 10)",
    )


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    if args.bus != "local":
        raise ValueError(
            "store runs the store in-process, with no server and so no bus: --bus redis"
            " measures nothing here (use chat --bus redis)"
        )
    if args.pool_max < 1:
        raise ValueError(f"--pool-max must be at least 1, got {args.pool_max}")
    cfg = {
        "count": pick(args.count, 50_000, 5_000, args.quick),
        "concurrency": args.concurrency,
        "convs": args.convs,
        "size": args.size,
        "synchronous": args.synchronous,
        "group_commit_max": args.group_commit_max,
        "store": args.store,
        "pool_max": args.pool_max,
    }
    # Same situation as the server in the socket scenarios: one core for the
    # event loop and the SQLite threads together.
    pinning = plan_pinning(not args.no_pin)
    pinned = pin_pid(0, pinning.server) if pinning.enabled else False
    uvloop = install_uvloop_policy()
    with workspace("store", args.store, pool_max_size=args.pool_max) as (workdir, backends):
        metrics, series = asyncio.run(_measure(workdir, cfg, backends, progress))
        metrics["backends"] = backends.as_json()
    metrics["config"] = cfg
    metrics["store"] = backends.store
    metrics["event_loop"] = "uvloop" if uvloop else "asyncio"
    metrics["pinned_cpus"] = sorted(pinning.server) if pinned else None
    if backends.dsn:
        metrics["notes"] = [
            "this process (event loop and the store's writer) is pinned; the PostgreSQL"
            " backends it talks to are not pinned: they run on any CPU, so the rate is"
            " not a one-core number (their CPU: postgres_cpu)",
            "every statement is a round trip to the local server over TCP (127.0.0.1),"
            " and each commit waits for the WAL flush if synchronous_commit is on",
        ]
    summary = {
        "count": metrics["appended"],
        "msgs_per_s": metrics["msgs_per_s"],
        "second_half_msgs_per_s": metrics["second_half_msgs_per_s"],
        "append_p50_ms": metrics["append_latency"]["p50_ms"],
        "append_p99_ms": metrics["append_latency"]["p99_ms"],
        "commits": metrics["commit_stats"]["transactions"],
        "mean_batch": metrics["commit_stats"]["mean_batch"],
        "store": backends.store,
    }
    if backends.dsn:
        settings = dict(backends.postgres_settings)
        summary["synchronous_commit"] = settings.get("synchronous_commit")
        summary["pool_max"] = cfg["pool_max"]
        summary["postgres_cpu_us_per_message"] = metrics["postgres_cpu_us_per_message"]
    else:
        summary["synchronous"] = cfg["synchronous"]
    return {"metrics": metrics, "series": series, "summary": summary}


def _open_store(workdir: Path, cfg: dict[str, Any], backends: Backends) -> Any:
    """The store as ``imserver.app.build_store`` would build it for this config."""
    if backends.dsn:
        from imserver.store.postgres import PostgresStore

        return PostgresStore(
            backends.dsn,
            min_pool=min(2, cfg["pool_max"]),
            max_pool=cfg["pool_max"],
            group_commit_max=cfg["group_commit_max"],
        )
    from imserver.store.sqlite.store import SqliteStore

    return SqliteStore(
        workdir / "imserver.db",
        synchronous=cfg["synchronous"],
        group_commit_max=cfg["group_commit_max"],
    )


async def _measure(
    workdir: Path, cfg: dict[str, Any], backends: Backends, progress: Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    from imserver.services.membership import dm_id
    from imserver.store.records import NewMessage

    store = _open_store(workdir, cfg, backends)
    await store.open()
    try:
        progress.update("setting up users and conversations")
        now_ms = int(time.time() * 1000)
        users = [f"u{i:05d}" for i in range(2 * cfg["convs"])]
        await store.upsert_users([(u, u) for u in users], now_ms)
        convs = []
        for k in range(cfg["convs"]):
            a, b = users[2 * k], users[2 * k + 1]
            conv = dm_id(a, b)
            await store.ensure_dm(conv, a, b, now_ms)
            convs.append((conv, a, b))
        filler = "x" * cfg["size"]
        count = cfg["count"]
        latencies = array("q")
        done_at = array("d")  # seconds since start, per append: throughput over time
        next_index = 0

        async def appender() -> None:
            nonlocal next_index
            while next_index < count:
                i = next_index
                next_index += 1
                conv, a, b = convs[i % len(convs)]
                sender = a if (i // len(convs)) % 2 == 0 else b
                t0 = time.perf_counter_ns()
                await store.append_message(
                    NewMessage(
                        conv=conv,
                        sender=sender,
                        device="bench",
                        kind="text",
                        body={"text": filler},
                        ts=int(time.time() * 1000),
                        client_msg_id=f"s-{i}",
                    )
                )
                t1 = time.perf_counter_ns()
                latencies.append((t1 - t0) // 1000)
                done_at.append((t1 - start_ns) / 1e9)

        # PostgreSQL's backends, polled from here: the scan (a few ms of this
        # process's CPU each 0.5 s) is in process_cpu.
        db = BackendCpu(backends.database)

        async def report() -> None:
            while True:
                await asyncio.sleep(0.5)
                db.poll()
                progress.update("appending", f"{len(latencies)}/{count}")

        commits_before = store.commit_stats
        db.start()
        cpu_before = cpu_sample(os.getpid())
        start_ns = time.perf_counter_ns()
        reporter = asyncio.create_task(report())
        try:
            await asyncio.gather(*(appender() for _ in range(cfg["concurrency"])))
        finally:
            reporter.cancel()
        elapsed = (time.perf_counter_ns() - start_ns) / 1e9
        cpu = cpu_between(cpu_before, cpu_sample(os.getpid()))
        db_cpu = db.result()
        batches = store.commit_stats[0] - commits_before[0]
        jobs = store.commit_stats[1] - commits_before[1]
    finally:
        await store.close()
    summary, cdf = latency_summary(latencies)
    # Whole 100 ms bins only: a partial last bin would plot as a false drop.
    per_tenth = [0] * max(1, int(elapsed * 10))
    for t in done_at:
        if int(t * 10) < len(per_tenth):
            per_tenth[int(t * 10)] += 1
    # The first second runs faster (empty tables, WAL not yet checkpointed);
    # the second half of the run is the sustained rate.
    second_half = sum(1 for t in done_at if t >= elapsed / 2)
    metrics = {
        "appended": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(len(latencies) / elapsed, 1),
        "second_half_msgs_per_s": round(second_half / (elapsed / 2), 1),
        "append_latency": summary,
        "commit_stats": {
            # Both stores count the same thing: transactions their writer
            # committed and the jobs (appends) in them.
            "source": f"{type(store).__name__}.commit_stats",
            "transactions": batches,
            "jobs": jobs,
            "mean_batch": round(jobs / batches, 2) if batches else 0.0,
        },
        "process_cpu": cpu,
        "cpu_us_per_message": _per_message(cpu["cpu_s"], len(latencies)),
    }
    if backends.dsn:
        metrics["postgres_cpu"] = db_cpu
        metrics["postgres_cpu_us_per_message"] = (
            _per_message(db_cpu["cpu_s"], len(latencies)) if db_cpu else None
        )
    series = {"cdf_grid": CDF_GRID, "append_cdf_ms": cdf, "msgs_per_100ms": per_tenth}
    return metrics, series


def _per_message(cpu_s: float, messages: int) -> float | None:
    return round(cpu_s * 1e6 / messages, 2) if messages else None


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    m, s = result["metrics"], result["series"]
    cfg = m["config"]
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(12, 4.8))
    rates = [n * 10 for n in s["msgs_per_100ms"]]
    ax_t.plot([i / 10 for i in range(len(rates))], rates)
    ax_t.axhline(m["msgs_per_s"], linestyle=":", color="k", label=f"mean {m['msgs_per_s']:,.0f}/s")
    if "second_half_msgs_per_s" in m:
        ax_t.axhline(
            m["second_half_msgs_per_s"],
            linestyle="--",
            color="tab:orange",
            label=f"second half {m['second_half_msgs_per_s']:,.0f}/s",
        )
    ax_t.set_xlabel("time (s)")
    ax_t.set_ylabel("messages persisted per second (100 ms bins)")
    commits = m["commit_stats"]
    ax_t.set_title(
        f"throughput — {commits['transactions']} commits, mean batch {commits['mean_batch']:g}"
    )
    ax_t.grid(True, alpha=0.3)
    ax_t.legend()
    ax_c.plot(s["append_cdf_ms"], [g / 100 for g in s["cdf_grid"]])
    log_axis(ax_c)
    ax_c.set_xlabel("append_message latency (ms)")
    ax_c.set_ylabel("fraction of appends")
    ax_c.set_title(f"latency with {cfg['concurrency']} concurrent appenders")
    ax_c.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"store: {m['appended']:,} appends, {_engine(m)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _engine(metrics: dict[str, Any]) -> str:
    """The store in the title (results from before ``--store`` are SQLite)."""
    b = metrics.get("backends", {"store": "sqlite"})
    if b["store"] != "postgres":
        return f"SqliteStore, synchronous={metrics['config']['synchronous']}"
    pg = b.get("postgres_settings", {})
    return (
        f"PostgresStore (PostgreSQL {pg.get('server_version', '?').split()[0]},"
        f" synchronous_commit={pg.get('synchronous_commit', '?')},"
        f" pool {b.get('pool_max_size', '?')}; its backends unpinned)"
    )
