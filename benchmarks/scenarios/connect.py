"""connect: N authenticated idle connections — connect rate and server memory per connection.

Load-generator processes (default 2) open N WebSocket connections to
imserver (TCP connect, upgrade, ``auth``), at most ``--concurrency`` in flight
per process, and then keep them idle (they only answer the server's pings).
Measured:

* **connect rate**: N / (first connect started → last ``auth`` answered),
  and each connection's connect + upgrade + auth latency;
* **server memory per connection**: ``VmRSS`` of the server process
  (``/proc/<pid>/status``) after all N are authenticated and ``--idle``
  seconds have passed, minus ``VmRSS`` before the first one, divided by N.
  Before the baseline reading a few warm-up connections are opened,
  authenticated and closed, so one-time allocations are not counted per
  connection. Kernel socket memory is outside the process and not in RSS
  (``/proc/net/sockstat`` is recorded beside it).

Target (the issue): at most 20 KB of server RSS per idle authenticated
connection.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from array import array
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    CDF_GRID,
    Progress,
    check_fd_budget,
    counter_delta,
    cpu_between,
    cpu_sample,
    latency_summary,
    listen_backlog,
    nofile_limits,
    plan_pinning,
    proc_status_kb,
    tcp_ext_counters,
    tcp_sockstat,
)
from benchmarks.plotting import log_axis, pyplot
from benchmarks.scenarios import pick
from benchmarks.servers import (
    SUBPROTOCOL,
    ServerHandle,
    metric_value,
    provision_imserver,
    start_imserver,
    stop,
    workspace,
)
from benchmarks.workers import Worker, WorkerError, split, start_worker
from benchmarks.wsclient import RawWebSocket

DESCRIPTION = "N authenticated idle connections: connect rate and server RSS per connection"
TARGET_KIB_PER_CONNECTION = 20.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connections", type=int, help="idle authenticated connections (default 10000; quick 500)"
    )
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="connects in flight per load-generator process (default 50)",
    )
    p.add_argument(
        "--idle",
        type=float,
        help="seconds all connections sit idle before the memory reading (default 5; quick 1)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        help="connections opened, authenticated and closed before the baseline reading"
        " (default 50; quick 20)",
    )
    p.add_argument(
        "--source-addrs",
        type=int,
        default=1,
        help="spread the connections over 127.0.0.1..127.0.0.K (more ephemeral ports; default 1:"
        " the kernel picks the source)",
    )


def _source_addrs(k: int) -> list[str]:
    return [f"127.0.0.{i}" for i in range(1, k + 1)] if k > 1 else []


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    q = args.quick
    n = pick(args.connections, 10_000, 500, q)
    cfg = {
        "connections": n,
        "procs": max(1, min(args.procs, n)),
        "concurrency": args.concurrency,
        "idle_s": pick(args.idle, 5.0, 1.0, q),
        "warmup": pick(args.warmup, 50, 20, q),
        "source_addrs": _source_addrs(args.source_addrs),
        "synchronous": args.synchronous,
    }
    fd_limits = check_fd_budget(n + 200, n // cfg["procs"] + 200)
    pinning = plan_pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        progress.note("CPU pinning not available; server and load share CPUs (noisier)")
    users = [f"i{i:05d}" for i in range(n)]
    warm = [f"w{i:04d}" for i in range(cfg["warmup"])]
    lifetime = 300 + n / 50 + cfg["idle_s"]
    with workspace("connect", args.store, args.bus) as (workdir, backends):
        progress.update("starting imserver", f"creating {n + len(warm)} users")
        prov, ws_port, http_port = provision_imserver(
            workdir,
            warm + users,
            synchronous=cfg["synchronous"],
            max_group_members=1000,
            backends=backends,
        )
        server = start_imserver(workdir, prov.config_path, ws_port, http_port, pinning)
        workers: list[Worker] = []
        metrics_after: dict[str, Any] = {}
        try:
            server_fds = nofile_limits(server.pid)
            if server_fds is not None and 0 <= server_fds[0] < n + 100:
                raise RuntimeError(f"the server may open only {server_fds[0]} files, need {n}")
            for i, chunk in enumerate(split(users, cfg["procs"])):
                workers.append(
                    start_worker(
                        f"connect-{i}",
                        "idle",
                        port=server.ws_port,
                        users=[(u, prov.tokens[u]) for u in chunk],
                        pinning=pinning,
                        max_lifetime_s=lifetime,
                        subprotocol=SUBPROTOCOL,
                        connect_concurrency=cfg["concurrency"],
                        extra={"source_addrs": cfg["source_addrs"]},
                    )
                )
            for w in workers:  # every worker is up before anything is measured
                w.call(("status",))
            progress.update("warm-up", f"{len(warm)} connections opened and closed")
            asyncio.run(_warmup(server.ws_port, [prov.tokens[u] for u in warm]))
            metrics = _measure(cfg, server, http_port, workers, progress)
        finally:
            for w in workers:
                w.stop()
            if server.proc.poll() is None:
                metrics_after = _after_close(server, http_port, progress)
            stop(server)
    metrics.update(metrics_after)
    metrics["config"] = cfg
    metrics["pinning"] = pinning.as_json()
    metrics["pinned"] = server.pinned
    metrics["backends"] = backends.as_json()
    metrics["nofile"] = {"orchestrator": fd_limits, "server": server_fds}
    series = {
        "cdf_grid": CDF_GRID,
        "connect_cdf_ms": metrics.pop("connect_cdf_ms"),
        "ramp": metrics.pop("ramp"),
    }
    m = metrics
    summary = {
        "connections": n,
        "connected": m["connected"],
        "connect_rate_per_s": m["connect_rate_per_s"],
        "connect_p50_ms": m["connect_latency"]["p50_ms"],
        "connect_p99_ms": m["connect_latency"]["p99_ms"],
        "rss_before_mib": round(m["rss_before_kib"]["VmRSS"] / 1024, 1),
        "rss_idle_mib": round(m["rss_idle_kib"]["VmRSS"] / 1024, 1),
        "rss_kib_per_connection": m["rss_kib_per_connection"],
        "rss_anon_kib_per_connection": m["rss_anon_kib_per_connection"],
        "target_kib_per_connection": TARGET_KIB_PER_CONNECTION,
        "meets_target": m["rss_kib_per_connection"] <= TARGET_KIB_PER_CONNECTION,
        "server_cpu_us_per_connect": m["server_cpu_us_per_connect"],
    }
    if m["warnings"]:
        summary["warnings"] = len(m["warnings"])
        for w in m["warnings"]:
            progress.note(w)
    return {"metrics": metrics, "series": series, "summary": summary}


async def _warmup(port: int, tokens: list[str]) -> None:
    """Open, authenticate and close a few connections (first-use allocations, caches)."""

    async def one(token: str) -> None:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def on_message(payload: bytes, _now: int) -> None:
            if not got.done():
                got.set_result(payload)

        ws = await RawWebSocket.connect("127.0.0.1", port, on_message, subprotocol=SUBPROTOCOL)
        ws.send_text(orjson.dumps({"type": "auth", "id": 1, "token": token}))
        answer = orjson.loads(await asyncio.wait_for(got, 10))
        ws.close()
        if answer.get("type") != "result":
            raise RuntimeError(f"warm-up auth failed: {answer}")

    await asyncio.gather(*(one(t) for t in tokens))
    await asyncio.sleep(0.2)


def _wait_gauge(http_port: int, want: int, timeout: float) -> float | None:
    """Wait until imserver_connections == want (the server has settled); the last value."""
    deadline = time.monotonic() + timeout
    value = metric_value(http_port, "imserver_connections")
    while value != want and time.monotonic() < deadline:
        time.sleep(0.1)
        value = metric_value(http_port, "imserver_connections")
    return value


def _measure(
    cfg: dict[str, Any],
    server: ServerHandle,
    http_port: int,
    workers: list[Worker],
    progress: Progress,
) -> dict[str, Any]:
    n = cfg["connections"]
    progress.update("baseline", "server memory before connecting")
    gauge_before = _wait_gauge(http_port, 0, 10)
    time.sleep(0.5)
    rss_before = proc_status_kb(server.pid)
    sock_before = tcp_sockstat()
    tcp_before = tcp_ext_counters()
    server_before = cpu_sample(server.pid)
    load_before = [cpu_sample(w.pid) for w in workers]
    t0 = time.monotonic()
    for w in workers:
        w.call(("connect",))
    ramp: list[tuple[float, int, int]] = []  # (s since start, connected, server VmRSS KiB)
    limit = 60 + n / 20
    while True:
        statuses = [w.call(("status",)) for w in workers]
        up = sum(s["connected"] for s in statuses)
        ramp.append((round(time.monotonic() - t0, 3), up, proc_status_kb(server.pid)["VmRSS"]))
        progress.update("connecting", f"{up}/{n}")
        if all(s["done"] for s in statuses):
            break
        server.check_alive()
        if time.monotonic() - t0 > limit:
            raise WorkerError(f"only {up} of {n} connections up after {limit:.0f}s")
        time.sleep(0.1)
    server_after = cpu_sample(server.pid)
    load_after = [cpu_sample(w.pid) for w in workers]
    tcp_after = tcp_ext_counters()
    errors = sum(s["error_count"] for s in statuses)
    if errors:
        first = next(e for s in statuses for e in s["errors"])
        raise WorkerError(f"{errors} of {n} connections failed, e.g. {first}")
    stats = [w.call(("connect_stats",)) for w in workers]
    lat = array("q")
    for st in stats:
        lat.frombytes(st["lat_us"])
    span_s = (max(st["finished_ns"] for st in stats) - min(st["started_ns"] for st in stats)) / 1e9
    # Idle: nothing is sent; the server's keepalive pings are answered.
    idle_end = time.monotonic() + cfg["idle_s"]
    while time.monotonic() < idle_end:
        progress.update("idle", f"{n} connections, {max(0.0, idle_end - time.monotonic()):.0f}s")
        server.check_alive()
        time.sleep(0.1)
    gauge_idle = _wait_gauge(http_port, n, 10)
    rss_idle = proc_status_kb(server.pid)
    sock_idle = tcp_sockstat()
    statuses = [w.call(("status",)) for w in workers]
    closes: dict[str, int] = {}
    for s in statuses:
        for k, v in s["closes"].items():
            closes[k] = closes.get(k, 0) + v
    ramp.append((round(time.monotonic() - t0, 3), n, rss_idle["VmRSS"]))
    server_cpu = cpu_between(server_before, server_after)
    load_cpu_s = sum(
        cpu_between(b, a)["cpu_s"] for b, a in zip(load_before, load_after, strict=True)
    )
    load_util = load_cpu_s / max(server_cpu["wall_s"], 1e-9)
    lat_summary, cdf = latency_summary(lat)
    per_conn = (rss_idle["VmRSS"] - rss_before["VmRSS"]) / n
    per_conn_anon = (rss_idle.get("RssAnon", 0) - rss_before.get("RssAnon", 0)) / n
    out: dict[str, Any] = {
        "connected": sum(st["connected"] for st in stats),
        "connect_span_s": round(span_s, 3),
        "connect_rate_per_s": round(n / max(span_s, 1e-9), 1),
        "connect_rate_by_quarter": _rate_by_quarter(ramp, n),
        "connect_latency": lat_summary,
        "server_listen_backlog": listen_backlog(server.ws_port),
        "tcp_while_connecting": counter_delta(tcp_before, tcp_after),
        "server_cpu_connecting": server_cpu,
        "server_cpu_us_per_connect": round(server_cpu["cpu_s"] * 1e6 / n, 1),
        "loadgen_cpu_s": round(load_cpu_s, 3),
        "loadgen_utilisation": round(load_util, 3),
        "server_gauge_before": gauge_before,
        "server_gauge_idle": gauge_idle,
        "rss_before_kib": rss_before,
        "rss_idle_kib": rss_idle,
        "rss_kib_per_connection": round(per_conn, 2),
        "rss_anon_kib_per_connection": round(per_conn_anon, 2),
        "target_kib_per_connection": TARGET_KIB_PER_CONNECTION,
        # Kernel side, not in RSS: sockets in use (both ends of every loopback
        # connection) and pages queued in TCP buffers (≈ 0 when idle).
        "tcp_sockstat_before": sock_before,
        "tcp_sockstat_idle": sock_idle,
        "closes_while_idle": closes,
        "connect_cdf_ms": cdf,
        "ramp": ramp,
    }
    warnings = []
    if gauge_idle != n:
        warnings.append(f"server reports {gauge_idle} connections, expected {n}")
    if closes:
        warnings.append(f"connections closed while idle: {closes}")
    if load_util > 0.85:
        warnings.append(
            f"load generators used {load_util:.0%} of a CPU while connecting:"
            " the connect rate may be theirs"
        )
    out["warnings"] = warnings
    return out


def _rate_by_quarter(ramp: list[tuple[float, int, int]], n: int) -> list[float | None]:
    """Connects/s within each quarter of the ramp (does the rate fall as N grows?)."""

    def time_at(count: float) -> float | None:
        prev_t, prev_c = 0.0, 0
        for t, c, _ in ramp:
            if c >= count:
                if c == prev_c:
                    return t
                return prev_t + (t - prev_t) * (count - prev_c) / (c - prev_c)
            prev_t, prev_c = t, c
        return None

    marks = [0.0] + [time_at(n * k / 4) for k in range(1, 5)]  # 0: the connect command
    out: list[float | None] = []
    for a, b in itertools.pairwise(marks):
        if a is None or b is None or b <= a:
            out.append(None)
        else:
            out.append(round(n / 4 / (b - a), 1))
    return out


def _after_close(server: ServerHandle, http_port: int, progress: Progress) -> dict[str, Any]:
    """RSS once every connection is gone again (how much memory the server keeps)."""
    progress.update("closing", "waiting for the server to drop the sessions")
    gauge = _wait_gauge(http_port, 0, 15)
    time.sleep(1.0)
    try:
        rss = proc_status_kb(server.pid)
    except OSError:
        return {}
    return {"server_gauge_after_close": gauge, "rss_after_close_kib": rss}


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    m, s = result["metrics"], result["series"]
    cfg = m["config"]
    fig, (ax_mem, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4.8))
    ramp = s["ramp"]
    base = m["rss_before_kib"]["VmRSS"]
    xs = [0] + [r[1] for r in ramp]
    ys = [base / 1024] + [r[2] / 1024 for r in ramp]
    ax_mem.plot(xs, ys, "o-", ms=2, label="server VmRSS (connecting, then idle)")
    n = cfg["connections"]
    ax_mem.plot(
        [0, n],
        [base / 1024, (base + TARGET_KIB_PER_CONNECTION * n) / 1024],
        ":",
        color="tab:red",
        label=f"target: {TARGET_KIB_PER_CONNECTION:g} KiB per connection",
    )
    ax_mem.set_xlabel("authenticated connections")
    ax_mem.set_ylabel("server RSS (MiB)")
    ax_mem.set_title(
        f"{m['rss_kib_per_connection']:g} KiB per idle connection"
        f" ({m['connect_rate_per_s']:,.0f} connects/s)"
    )
    ax_mem.grid(True, alpha=0.3)
    ax_mem.legend(loc="upper left")
    grid = [g / 100 for g in s["cdf_grid"]]
    lat = m["connect_latency"]
    ax_cdf.plot(
        s["connect_cdf_ms"],
        grid,
        label=f"connect + upgrade + auth (p50 {lat['p50_ms']:g}, p99 {lat['p99_ms']:g} ms)",
    )
    log_axis(ax_cdf)
    ax_cdf.set_xlabel("latency (ms)")
    ax_cdf.set_ylabel("fraction of connections")
    ax_cdf.set_title(f"{cfg['concurrency']} in flight per load process × {cfg['procs']}")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(loc="center right")
    fig.suptitle(f"connect: {n:,} authenticated idle connections")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
