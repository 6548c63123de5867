"""storm: N clients in G groups drop at once and resume; time to resync, messages lost.

N clients (default 5,000) are members of G groups (default 50; client i is
in group i mod G), spread over 2 load-generator processes. Each connects,
authenticates and syncs. A publisher (its own process and connection, the
groups' owner) keeps sending into the groups round-robin at ``--rate``
messages/s the whole time. After ``--steady`` seconds every client socket is
reset at once (TCP RST, no close frame: a network failure), and every
client immediately resumes as docs/protocol.md says: reconnect, ``auth``,
``sync`` with ``since`` = its per-conversation last gapless seq, again while
``more``. A client that fails retries with jittered backoff.

Measured: the time from the drop until the last client's sync came back
(and each client's), then — after the publisher stops — **messages lost**:
every client must hold every seq 1..last of its group, where ``last`` is the
server's own last seq (``group.list``); each client records every seq it got
by event or by sync. Target (the issue): 5,000 resynced in ≤ 15 s, 0 lost.
"""

from __future__ import annotations

import argparse
import time
from array import array
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CDF_GRID,
    Progress,
    check_fd_budget,
    counter_delta,
    cpu_between,
    cpu_sample,
    latency_summary,
    listen_backlog,
    plan_pinning,
    proc_status_kb,
    tcp_ext_counters,
)
from benchmarks.plotting import log_axis, pyplot
from benchmarks.scenarios import pick
from benchmarks.servers import (
    SUBPROTOCOL,
    ServerHandle,
    provision_imserver,
    start_imserver,
    stop,
    workspace,
)
from benchmarks.workers import Worker, WorkerError, split, start_worker, wait_connected

DESCRIPTION = "N clients in G groups drop at once and resume (auth + sync): resync time, loss"
TARGET_RESYNC_S = 15.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, help="connected clients (default 5000; quick 300)")
    p.add_argument("--groups", type=int, help="groups the clients are spread over (default 50)")
    p.add_argument(
        "--rate", type=float, help="messages/s into the groups, total (default 100; quick 50)"
    )
    p.add_argument(
        "--steady", type=float, help="seconds of traffic before the drop (default 5; quick 1.5)"
    )
    p.add_argument(
        "--after",
        type=float,
        help="seconds of traffic after the last client resynced (default 2; quick 1)",
    )
    p.add_argument("--size", type=int, default=100, help="message text bytes (default 100)")
    p.add_argument("--procs", type=int, default=2, help="client load-generator processes")
    p.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="initial connects in flight per load process (default 50; not measured)",
    )
    p.add_argument(
        "--resume-concurrency",
        type=int,
        default=0,
        help="reconnects in flight per load process after the drop (default 0: all at once)",
    )
    p.add_argument(
        "--attempts", type=int, default=8, help="reconnect attempts per client (default 8)"
    )
    p.add_argument(
        "--drain", type=float, default=10.0, help="max seconds for late events (default 10)"
    )
    p.add_argument(
        "--source-addrs",
        type=int,
        default=1,
        help="spread the connections over 127.0.0.1..127.0.0.K (default 1: the kernel picks)",
    )


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    q = args.quick
    n = pick(args.clients, 5000, 300, q)
    groups = max(1, min(pick(args.groups, 50, 10, q), n))
    procs = max(1, min(args.procs, n))
    cfg = {
        "clients": n,
        "groups": groups,
        "rate": pick(args.rate, 100.0, 50.0, q),
        "steady_s": pick(args.steady, 5.0, 1.5, q),
        "after_s": pick(args.after, 2.0, 1.0, q),
        "size": args.size,
        "procs": procs,
        "concurrency": args.concurrency,
        "resume_concurrency": args.resume_concurrency or -(-n // procs),
        "attempts": args.attempts,
        "drain_s": args.drain,
        "source_addrs": [f"127.0.0.{i}" for i in range(1, args.source_addrs + 1)]
        if args.source_addrs > 1
        else [],
        "synchronous": args.synchronous,
    }
    # Old and new sockets may coexist for a moment in the server.
    check_fd_budget(2 * n + 200, 2 * (n // procs) + 200)
    pinning = plan_pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        progress.note("CPU pinning not available; server and load share CPUs (noisier)")
    users = [f"s{i:05d}" for i in range(n)]
    publisher = "pub"
    members = [[u for i, u in enumerate(users) if i % groups == g] for g in range(groups)]
    lifetime = 300 + n / 20 + cfg["steady_s"] + cfg["after_s"] + cfg["drain_s"]
    with workspace("storm", args.store, args.bus) as (workdir, backends):
        progress.update("starting imserver", f"creating {n + 1} users")
        prov, ws_port, http_port = provision_imserver(
            workdir,
            [publisher, *users],
            synchronous=cfg["synchronous"],
            max_group_members=max(1000, n // groups + 10),
            backends=backends,
        )
        server = start_imserver(workdir, prov.config_path, ws_port, http_port, pinning)
        workers: list[Worker] = []
        try:
            pub = start_worker(
                "storm-publisher",
                "groups",
                port=server.ws_port,
                users=[(publisher, prov.tokens[publisher])],
                pinning=pinning,
                max_lifetime_s=lifetime,
                subprotocol=SUBPROTOCOL,
            )
            workers.append(pub)
            chunks = split(users, procs)
            clients = [
                start_worker(
                    f"storm-clients-{i}",
                    "resync",
                    port=server.ws_port,
                    users=[(u, prov.tokens[u]) for u in chunk],
                    pinning=pinning,
                    max_lifetime_s=lifetime,
                    subprotocol=SUBPROTOCOL,
                    connect_concurrency=cfg["concurrency"],
                    # As imserver_sdk.Client: open_timeout and request_timeout 10 s.
                    extra={"source_addrs": cfg["source_addrs"], "timeout_s": 10.0},
                )
                for i, chunk in enumerate(chunks)
            ]
            workers.extend(clients)
            progress.update("creating the groups", f"{groups} × {len(members[0])} members")
            pub.call(("connect",))
            convs: list[str] = pub.call(("create_groups", members), timeout=120)
            conv_of = {u: convs[i % groups] for i, u in enumerate(users)}
            memberships = [{u: [conv_of[u]] for u in chunk} for chunk in chunks]
            wait_connected(
                clients,
                lambda up, total: progress.update("connecting + sync", f"{up}/{total}"),
                timeout=60 + n / 20,
            )
            metrics = _storm(cfg, server, pub, clients, memberships, progress)
        finally:
            for w in workers:
                w.stop()
            stop(server)
    metrics["config"] = cfg
    metrics["pinning"] = pinning.as_json()
    metrics["pinned"] = server.pinned
    metrics["backends"] = backends.as_json()
    series = {
        "cdf_grid": CDF_GRID,
        "resync_cdf_ms": metrics.pop("resync_cdf_ms"),
        "progress": metrics.pop("progress"),
    }
    m = metrics
    summary = {
        "clients": n,
        "groups": groups,
        "rate": cfg["rate"],
        "resynced": m["resynced"],
        "resync_s": m["resync_s"],
        "resync_p50_ms": m["resync_latency"]["p50_ms"],
        "resync_p99_ms": m["resync_latency"]["p99_ms"],
        "target_resync_s": TARGET_RESYNC_S,
        "lost": m["lost"],
        "meets_target": m["resynced"] == n and m["resync_s"] <= TARGET_RESYNC_S and m["lost"] == 0,
        "messages_sent": m["publisher"]["sent"],
        "retries": m["retries"],
        "listen_overflows": m["tcp_during_storm"].get("ListenOverflows"),
        "syn_retransmits": m["tcp_during_storm"].get("TCPSynRetrans"),
    }
    if m["warnings"]:
        summary["warnings"] = len(m["warnings"])
        for w in m["warnings"]:
            progress.note(w)
    return {"metrics": metrics, "series": series, "summary": summary}


def _storm(
    cfg: dict[str, Any],
    server: ServerHandle,
    pub: Worker,
    clients: list[Worker],
    memberships: list[dict[str, list[str]]],
    progress: Progress,
) -> dict[str, Any]:
    n = cfg["clients"]
    pub.call(("start_sending", cfg["rate"], cfg["size"]))
    steady_end = time.monotonic() + cfg["steady_s"]
    while time.monotonic() < steady_end:
        server.check_alive()
        left = steady_end - time.monotonic()
        progress.update("traffic", f"{cfg['rate']:g} msg/s, drop in {left:.0f}s")
        time.sleep(0.1)

    # -- the drop -------------------------------------------------------------------
    rss_before = proc_status_kb(server.pid)
    tcp_before = tcp_ext_counters()
    server_before = cpu_sample(server.pid)
    load_before = [cpu_sample(w.pid) for w in clients]
    for w in clients:  # commands first, answers after: the workers drop ~together
        w.send(("drop", cfg["resume_concurrency"], cfg["attempts"]))
    drop_ns = [w.receive() for w in clients]
    t0 = time.monotonic()
    progress_series: list[tuple[float, int]] = [(0.0, 0)]
    limit = 60 + n / 10
    while True:
        statuses = [w.call(("resume_status",)) for w in clients]
        done = sum(s["resumed"] for s in statuses)
        progress_series.append((round(time.monotonic() - t0, 3), done))
        progress.update("storm: resuming", f"{done}/{n} resynced")
        if all(s["done"] for s in statuses):
            break
        server.check_alive()
        if time.monotonic() - t0 > limit:
            raise WorkerError(f"only {done} of {n} clients resynced after {limit:.0f}s")
        time.sleep(0.05)
    server_after = cpu_sample(server.pid)
    load_after = [cpu_sample(w.pid) for w in clients]
    tcp_after = tcp_ext_counters()
    rss_after = proc_status_kb(server.pid)
    stats = [w.call(("resume_stats",)) for w in clients]

    # -- traffic goes on a little, then stops; then the reckoning ------------------------
    after_end = time.monotonic() + cfg["after_s"]
    while time.monotonic() < after_end:
        progress.update("traffic after the storm", f"{after_end - time.monotonic():.0f}s")
        time.sleep(0.1)
    progress.update("stopping the publisher")
    sent = pub.call(("finish", cfg["drain_s"]), timeout=cfg["drain_s"] + 30)
    last: dict[str, int] = pub.call(("last_seqs",))
    deadline = time.monotonic() + cfg["drain_s"]
    while True:
        checks = [
            w.call(("check", last, mem), timeout=60)
            for w, mem in zip(clients, memberships, strict=True)
        ]
        missing = sum(c["missing"] for c in checks)
        progress.update("checking every client's messages", f"{missing} missing")
        if missing == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    # -- numbers ----------------------------------------------------------------------------
    first_drop = min(drop_ns)
    done_all = array("q")
    per_client_us = array("q")
    for st in stats:
        times = array("q")
        times.frombytes(st["done_ns"])
        for t in times:
            if t:
                done_all.append(t)
                per_client_us.append((t - st["drop_ns"]) // 1000)
    resynced = len(done_all)
    resync_s = (max(done_all) - first_drop) / 1e9 if done_all else None
    lat_summary, cdf = latency_summary(per_client_us)
    acks_sent = array("q")
    acks_sent.frombytes(sent["ack_sent_ns"])
    acks_us = array("q")
    acks_us.frombytes(sent["ack_us"])
    storm_end = max(done_all) if done_all else first_drop
    steady_ack = [a for s, a in zip(acks_sent, acks_us, strict=True) if s < first_drop]
    storm_ack = [a for s, a in zip(acks_sent, acks_us, strict=True) if first_drop <= s <= storm_end]
    steady_summary, _ = latency_summary(steady_ack)
    storm_summary, _ = latency_summary(storm_ack)
    server_cpu = cpu_between(server_before, server_after)
    load_cpu_s = sum(
        cpu_between(b, a)["cpu_s"] for b, a in zip(load_before, load_after, strict=True)
    )
    load_util = load_cpu_s / max(server_cpu["wall_s"], 1e-9)
    closes: dict[str, int] = {}
    for s in statuses:
        for k, v in s["closes"].items():
            closes[k] = closes.get(k, 0) + v
    errors = [e for s in statuses for e in s["errors"]]
    retries = sum(s["retries"] for s in statuses)
    retry_reasons: dict[str, int] = {}
    for s in statuses:
        for k, v in s["retry_reasons"].items():
            retry_reasons[k] = retry_reasons.get(k, 0) + v
    out: dict[str, Any] = {
        "resynced": resynced,
        "resync_s": round(resync_s, 3) if resync_s is not None else None,
        "drop_skew_ms": round((max(drop_ns) - first_drop) / 1e6, 3),
        "resync_latency": lat_summary,
        "retries": retries,
        "retry_reasons": retry_reasons,
        "resume_errors": errors,
        # The server's accept queue: when full, SYNs are dropped and clients
        # retransmit after 1 s, 3 s, 7 s (machine-wide counters, but nothing
        # else connects here during the storm).
        "server_listen_backlog": listen_backlog(server.ws_port),
        "tcp_during_storm": counter_delta(tcp_before, tcp_after),
        "closes": closes,
        "lost": missing,
        "check": {
            k: sum(c[k] for c in checks)
            for k in (
                "clients",
                "incomplete",
                "missing",
                "expected",
                "beyond",
                "events",
                "duplicates",
                "sync_requests",
                "sync_messages",
            )
        },
        "lost_examples": [e for c in checks for e in c["examples"]][:10],
        "server_last_seqs": {
            "conversations": len(last),
            "sum": sum(last.values()),
            "min": min(last.values(), default=0),
            "max": max(last.values(), default=0),
        },
        "publisher": {
            k: v for k, v in sent.items() if k not in ("ack_sent_ns", "ack_us", "first_ns")
        },
        "publisher_ack_steady": steady_summary,
        "publisher_ack_during_storm": storm_summary,
        "server_cpu_storm": server_cpu,
        "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_after,
        "loadgen_cpu_s": round(load_cpu_s, 3),
        "loadgen_utilisation": round(load_util, 3),
        "resync_cdf_ms": cdf,
        "progress": progress_series,
    }
    warnings = []
    if resynced < n:
        warnings.append(f"only {resynced} of {n} clients resynced; e.g. {errors[:1]}")
    if missing:
        warnings.append(f"{missing} messages lost, e.g. {out['lost_examples'][:2]}")
    if out["check"]["beyond"]:
        warnings.append(f"{out['check']['beyond']} seqs held beyond the server's last seq")
    if sent["errors"] or sent["unacked"]:
        warnings.append(f"publisher: errors {sent['errors']}, unacked {sent['unacked']}")
    if closes:
        warnings.append(f"connections closed by the server: {closes}")
    if load_util > 0.85:
        warnings.append(
            f"load generators used {load_util:.0%} of a CPU during the storm: may be the limit"
        )
    out["warnings"] = warnings
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    m, s = result["metrics"], result["series"]
    cfg = m["config"]
    fig, (ax_prog, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4.8))
    xs = [p[0] for p in s["progress"]]
    ys = [p[1] for p in s["progress"]]
    ax_prog.plot(xs, ys, "-", label="clients resynced (auth + sync done)")
    ax_prog.axhline(cfg["clients"], color="k", lw=0.8, ls=":")
    ax_prog.axvline(TARGET_RESYNC_S, color="tab:red", ls=":", label=f"target {TARGET_RESYNC_S:g} s")
    ax_prog.set_xlabel("seconds since every socket was reset")
    ax_prog.set_ylabel("clients resynced")
    ax_prog.set_xlim(0, max(xs[-1], 1.0) * 1.05)
    ax_prog.grid(True, alpha=0.3)
    ax_prog.legend(loc="lower right")
    ax_prog.set_title(f"all {m['resynced']:,} resynced in {m['resync_s']:g} s, {m['lost']} lost")
    grid = [g / 100 for g in s["cdf_grid"]]
    lat = m["resync_latency"]
    ax_cdf.plot(
        s["resync_cdf_ms"],
        grid,
        label=f"drop → resynced (p50 {lat['p50_ms']:g}, p99 {lat['p99_ms']:g} ms)",
    )
    log_axis(ax_cdf)
    ax_cdf.set_xlabel("per client (ms)")
    ax_cdf.set_ylabel("fraction of clients")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(loc="lower right")
    ax_cdf.set_title(f"{m['retries']} retries")
    fig.suptitle(
        f"storm: {cfg['clients']:,} clients in {cfg['groups']} groups,"
        f" {cfg['rate']:g} msg/s flowing throughout"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
