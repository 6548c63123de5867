"""fanout: one publisher, N online members of one group; cost and latency of delivery.

The same load generator drives, in one invocation, first the baseline
(``benchmarks/baselines/ws_broadcast.py``: ``websockets.broadcast`` to every
connection, nothing else) and then imserver (auth, validation, membership,
SQLite append + group commit, bus, hub). Both get N member connections plus
the publisher's, and write every message to all N + 1 sockets (imserver also
echoes to the sending device), so "a delivery" means the same thing on both.

Headline: ``ratio_cpu_per_delivery`` = imserver's server CPU time per
delivery / the baseline's — how many times the floor imserver's fan-out costs.
"""

from __future__ import annotations

import argparse
import os
import time
from array import array
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CDF_GRID,
    Pinning,
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
    ServerHandle,
    provision_imserver,
    start_baseline,
    start_imserver,
    stop,
    workspace,
)
from benchmarks.workers import Worker, WorkerError, split, start_worker, wait_connected

DESCRIPTION = "N members in one group, one publisher at rate R; imserver vs a websockets floor"
DEFAULT_SWEEP = (5, 10, 20, 50, 100, 200, 500, 1000, 2000)
WARMUP_PHASE = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, help="online group members (default 1000; quick 100)")
    p.add_argument("--rate", type=float, help="publisher messages/s (default 20; quick 50)")
    p.add_argument(
        "--duration",
        type=float,
        help="seconds per measured rate (default 10, sweep 5; quick 3, quick sweep 2)",
    )
    p.add_argument("--sweep", action="store_true", help="sweep rates until saturation")
    p.add_argument(
        "--rates",
        help="comma-separated rates for --sweep (default "
        + ",".join(map(str, DEFAULT_SWEEP))
        + ")",
    )
    p.add_argument("--size", type=int, default=200, help="message text bytes (default 200)")
    p.add_argument("--procs", type=int, help="member load-generator processes (default 2; quick 1)")
    p.add_argument(
        "--p99-limit-ms",
        type=float,
        default=500.0,
        help="a rate whose p99 exceeds this counts as saturated (default 500)",
    )
    p.add_argument(
        "--drain", type=float, help="max seconds to wait for stragglers (default 10; quick 5)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="alternate baseline/imserver this many times and keep the median"
        " (default 3, sweep 1; quick 1)",
    )
    p.add_argument(
        "--publishers",
        type=int,
        default=1,
        help="sending connections sharing the rate, each a group member (default 1)",
    )
    p.add_argument("--no-baseline", action="store_true", help="measure imserver only (no ratio)")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also run the write floor: the baseline server writing one ready-made frame"
        " with transport.write per socket (what no Python server can undercut per write)",
    )


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    q = args.quick
    members = pick(args.members, 1000, 100, q)
    rates: list[float]
    if args.sweep:
        rates = [float(r) for r in args.rates.split(",")] if args.rates else list(DEFAULT_SWEEP)
        duration = pick(args.duration, 5.0, 2.0, q)
    else:
        rates = [pick(args.rate, 20.0, 50.0, q)]
        duration = pick(args.duration, 10.0, 3.0, q)
    cfg = {
        "members": members,
        "rates": rates,
        "duration_s": duration,
        "size": args.size,
        "procs": pick(args.procs, 2, 1, q),
        "drain_s": pick(args.drain, 10.0, 5.0, q),
        "p99_limit_ms": args.p99_limit_ms,
        "synchronous": args.synchronous,
        "sweep": bool(args.sweep),
        "publishers": max(1, args.publishers),
        "rounds": pick(args.rounds, 1 if args.sweep else 3, 1, q),
        # imserver's store and bus; the baselines have neither.
        "store": args.store,
        "bus": args.bus,
    }
    pinning = plan_pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        progress.note("CPU pinning not available; server and load share CPUs (noisier)")
    targets = ["imserver"] if args.no_baseline else ["baseline", "imserver"]
    if args.floor:
        targets.insert(0, "floor")
    # Rounds alternate the servers (A B A B ...) so that slow drifts of the
    # machine (a VM's neighbours, frequency) hit both alike; medians are kept.
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for n_round in range(1, cfg["rounds"] + 1):
        for target in targets:
            label = target if cfg["rounds"] == 1 else f"{target} round {n_round}/{cfg['rounds']}"
            runs[target].append(_run_target(target, label, cfg, pinning, progress))
    results = {
        t: {
            "points": _combine([run["points"] for run in rs]),
            "half": _median_half([run["half"] for run in rs if run["half"]]),
            "info": rs[-1]["info"],
        }
        for t, rs in runs.items()
    }

    metrics: dict[str, Any] = {
        "config": cfg,
        "pinning": pinning.as_json(),
        **{
            t: {
                "points": [_public(p) for p in r["points"]],
                "half_saturation": _public(r["half"]) if r["half"] else None,
                **r["info"],
            }
            for t, r in results.items()
        },
    }
    series = {
        t: {"cdf_ms": {str(p["rate"]): p["cdf_ms"] for p in r["points"]}, "cdf_grid": CDF_GRID}
        for t, r in results.items()
    }
    summary: dict[str, Any] = {"members": members}
    ours = results["imserver"]["points"]
    if args.sweep:
        for t, r in results.items():
            summary[f"{t}_saturation_rate"] = _saturation(r["points"])
            summary[f"{t}_max_sustained_rate"] = _max_sustained(r["points"])
            summary.update(_half_summary(t, r["half"]))
    headline = _headline_point(ours, results.get("baseline", {}).get("points"))
    summary.update(_flat("imserver", headline["imserver"]))
    summary["deliveries"] = sum(p["deliveries"] for p in ours)
    if "baseline" in results:
        base = results["baseline"]["points"]
        summary.update(_flat("baseline", headline["baseline"]))
        ratio = _ratio(headline["imserver"], headline["baseline"])
        summary["ratio_cpu_per_delivery"] = ratio
        summary["ratio_at_rate"] = headline["imserver"]["rate"]
        metrics["ratio_cpu_per_delivery"] = ratio
        metrics["ratio_by_rate"] = {
            str(a["rate"]): _ratio(a, b) for a in ours for b in base if a["rate"] == b["rate"]
        }
    if "floor" in results:
        floor_point = _same_rate(results["floor"]["points"], headline["imserver"]["rate"])
        summary.update(_flat("floor", floor_point))
        summary["floor_ratio_to_baseline"] = (
            _ratio(floor_point, headline["baseline"]) if "baseline" in headline else None
        )
        summary["ratio_to_floor"] = _ratio(headline["imserver"], floor_point)
    warnings = [w for r in results.values() for p in r["points"] for w in p["warnings"]]
    if warnings:
        metrics["warnings"] = warnings
        summary["warnings"] = len(warnings)
    return {"metrics": metrics, "series": series, "summary": summary}


# -- one server -------------------------------------------------------------------
def _run_target(
    target: str, label: str, cfg: dict[str, Any], pinning: Pinning, progress: Progress
) -> dict[str, Any]:
    """Start ``target``, connect everyone, run a warm-up and each rate; stop it all."""
    n = cfg["members"]
    users = [f"m{i:05d}" for i in range(n)]
    publishers = [f"pub{i:03d}" for i in range(cfg["publishers"])]
    lifetime = 120 + len(cfg["rates"]) * (cfg["duration_s"] + cfg["drain_s"] + 30)
    ours = target == "imserver"
    engines = (cfg["store"], cfg["bus"]) if ours else ("sqlite", "local")
    with workspace(target, *engines) as (workdir, backends):
        progress.update(f"{label}: starting server")
        if target == "imserver":
            prov, ws_port, http_port = provision_imserver(
                workdir,
                [*publishers, *users],
                synchronous=cfg["synchronous"],
                max_group_members=max(1000, n + 10),
                backends=backends,
            )
            tokens = prov.tokens
            server = start_imserver(workdir, prov.config_path, ws_port, http_port, pinning)
        else:
            tokens = {u: "baseline" for u in [*publishers, *users]}
            server = start_baseline(workdir, pinning, raw_frames=target == "floor")
        workers: list[Worker] = []
        try:
            pub = start_worker(
                f"{target}-publisher",
                "publisher",
                port=server.ws_port,
                users=[(p, tokens[p]) for p in publishers],
                pinning=pinning,
                max_lifetime_s=lifetime,
                subprotocol=SUBPROTOCOL,
            )
            workers.append(pub)
            chunks = split([(u, tokens[u]) for u in users], cfg["procs"])
            member_workers = [
                start_worker(
                    f"{target}-members-{i}",
                    "members",
                    port=server.ws_port,
                    users=chunk,
                    pinning=pinning,
                    max_lifetime_s=lifetime,
                    subprotocol=SUBPROTOCOL,
                )
                for i, chunk in enumerate(chunks)
            ]
            workers.extend(member_workers)
            progress.update(f"{label}: publisher connecting")
            pub.call(("connect",))
            if target == "imserver":
                progress.update(f"{label}: creating the group")
                pub.call(("create_group", [*publishers[1:], *users], 500), timeout=120)
            else:
                pub.call(("use_conv", "g:baseline"))
            wait_connected(
                member_workers,
                lambda up, total: progress.update(f"{label}: members connecting", f"{up}/{total}"),
                timeout=180,
            )
            # Warm-up (not recorded): caches, first-use allocations, TCP windows.
            progress.update(f"{label}: warm-up")
            _phase(label, WARMUP_PHASE, 10.0, 1.0, cfg, server, pub, member_workers, progress)
            points = []
            for i, rate in enumerate(cfg["rates"], start=1):
                point = _phase(
                    label, i, rate, cfg["duration_s"], cfg, server, pub, member_workers, progress
                )
                points.append(point)
                for w in point["warnings"]:
                    progress.note(f"{label} @ {rate:g}/s: {w}")
                if cfg["sweep"] and point["saturated"]:
                    break
            half = None
            if cfg["sweep"] and points and points[-1]["saturated"]:
                # The latency target is at half the saturation rate:
                # half of what the saturated step actually delivered.
                capacity = min(points[-1]["msgs_per_s"], points[-1]["rate"])
                half_rate = round(capacity / 2, 1)
                half = _phase(
                    label,
                    len(cfg["rates"]) + 1,
                    half_rate,
                    cfg["duration_s"],
                    cfg,
                    server,
                    pub,
                    member_workers,
                    progress,
                )
                half["saturation_msgs_per_s"] = capacity
            info: dict[str, Any] = {
                "pinned": server.pinned,
                "server_pid_threads": _threads(server.pid),
            }
            if ours:
                info["backends"] = backends.as_json()
        finally:
            for w in workers:
                w.stop()
            stop(server)
    return {"points": points, "half": half, "info": info}


def _threads(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return None


def _phase(
    target: str,
    phase: int,
    rate: float,
    duration: float,
    cfg: dict[str, Any],
    server: ServerHandle,
    pub: Worker,
    members: list[Worker],
    progress: Progress,
) -> dict[str, Any]:
    """Run one paced phase and measure it; the CPU window spans first send to last delivery."""
    label = f"{target} @ {rate:g} msg/s" if phase != WARMUP_PHASE else f"{target}: warm-up"
    workers = [pub, *members]
    server_before = cpu_sample(server.pid)
    load_before = [cpu_sample(w.pid) for w in workers]
    pub.send(("phase", phase, rate, duration, cfg["size"], cfg["drain_s"]))
    t0 = time.monotonic()
    limit = duration * 3 + cfg["drain_s"] + 60
    while not pub.poll(0.2):
        server.check_alive()
        progress.update(label, f"{min(time.monotonic() - t0, duration):.0f}/{duration:g}s")
        if time.monotonic() - t0 > limit:
            raise WorkerError(f"publisher did not finish phase {phase} in {limit:.0f}s")
    sent_info = pub.receive()
    sent = sent_info["sent"]
    expected_members = sent * cfg["members"]
    expected_echo = sent * cfg["publishers"]  # every publisher is a member too
    deadline = time.monotonic() + cfg["drain_s"]
    while True:
        stats = [w.call(("phase_stats", phase)) for w in members]
        echo = pub.call(("echo_stats", phase))
        got = sum(s["count"] for s in stats)
        progress.update(label, f"draining {got + echo['echo']}/{expected_members + expected_echo}")
        if got >= expected_members and echo["echo"] >= expected_echo:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    sent_info["echo"], sent_info["echo_last_ns"] = echo["echo"], echo["last_ns"]
    server_after = cpu_sample(server.pid)
    load_after = [cpu_sample(w.pid) for w in workers]
    collected = [w.call(("collect", phase)) for w in members]
    if phase == WARMUP_PHASE:
        return {}

    lat = array("q")
    for c in collected:
        lat.frombytes(c["lat_us"])
    acks = array("q", sent_info["ack_lat_us"])
    member_deliveries = sum(c["count"] for c in collected)
    deliveries = member_deliveries + sent_info["echo"]
    expected = sent * (cfg["members"] + cfg["publishers"])
    last_ns = max([c["last_ns"] for c in collected] + [sent_info["echo_last_ns"]])
    span_s = max((last_ns - sent_info["first_ns"]) / 1e9, 1e-9)
    server_cpu = cpu_between(server_before, server_after)
    load_cpu_s = sum(
        cpu_between(b, a)["cpu_s"] for b, a in zip(load_before, load_after, strict=True)
    )
    load_util = load_cpu_s / max(server_cpu["wall_s"], 1e-9)
    summary, cdf = latency_summary(lat)
    ack_summary, _ = latency_summary(acks)
    cpu_us = server_cpu["cpu_s"] * 1e6 / deliveries if deliveries else None
    point: dict[str, Any] = {
        "rate": rate,
        "sent": sent,
        "send_rate_actual": round(sent / max(sent_info["send_span_s"], 1e-9), 2),
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "delivered_fraction": round(deliveries / expected, 5) if expected else 0.0,
        "deliveries_per_s": round(deliveries / span_s, 1),
        "msgs_per_s": round(sent / span_s, 2),
        "latency": summary,
        "ack_latency": ack_summary,
        "unacked": sent_info["unacked"],
        "errors": sent_info["errors"],
        "server_cpu": server_cpu,
        "cpu_us_per_delivery": round(cpu_us, 3) if cpu_us is not None else None,
        "loadgen_cpu_s": round(load_cpu_s, 3),
        "loadgen_utilisation": round(load_util, 3),
        "closes": {**sent_info["closes"], **_merge_closes(stats)},
        "cdf_ms": cdf,
    }
    if "cpu_s_schedstat" in server_cpu and deliveries:
        point["cpu_us_per_delivery_schedstat"] = round(
            server_cpu["cpu_s_schedstat"] * 1e6 / deliveries, 3
        )
    reasons = []
    if point["delivered_fraction"] < 0.999:
        reasons.append(f"only {point['delivered_fraction']:.1%} delivered within the drain time")
    if point["msgs_per_s"] < 0.9 * rate:
        reasons.append(f"delivered {point['msgs_per_s']:g} msg/s of {rate:g} offered")
    if summary["p99_ms"] > cfg["p99_limit_ms"]:
        reasons.append(f"p99 {summary['p99_ms']:g} ms > {cfg['p99_limit_ms']:g} ms")
    if sent_info["errors"]:
        reasons.append(f"error answers: {sent_info['errors']}")
    point["saturated"] = bool(reasons)
    point["saturation_reasons"] = reasons
    warnings = []
    if load_util > 0.85 * _load_cpu_count():
        warnings.append(f"load generator used {load_util:.0%} of its CPU: it may be the bottleneck")
    if point["closes"]:
        warnings.append(f"connections closed during the phase: {point['closes']}")
    point["warnings"] = warnings
    return point


def _load_cpu_count() -> int:
    """CPUs the load side may use (the orchestrator is pinned like the workers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except OSError:
        return max(1, os.cpu_count() or 1)


def _merge_closes(stats: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in stats:
        for code, n in s.get("closes", {}).items():
            out[code] = out.get(code, 0) + n
    return out


# -- summarising ------------------------------------------------------------------
def _combine(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One point per rate: the round with the median CPU per delivery, plus every round's.

    A whole point (not per-field medians) is kept so that its numbers stay
    consistent with each other; the spread over rounds is recorded beside it.
    """
    if len(rounds) == 1:
        return rounds[0]
    rates: list[float] = []
    for pts in rounds:
        rates.extend(p["rate"] for p in pts if p["rate"] not in rates)
    out = []
    for rate in rates:
        pts = [p for pts in rounds for p in pts if p["rate"] == rate]
        pts.sort(key=lambda p: p["cpu_us_per_delivery"] or float("inf"))
        chosen = dict(pts[(len(pts) - 1) // 2])
        chosen["rounds"] = len(pts)
        chosen["cpu_us_per_delivery_rounds"] = [p["cpu_us_per_delivery"] for p in pts]
        chosen["p99_ms_rounds"] = sorted(p["latency"]["p99_ms"] for p in pts)
        chosen["warnings"] = [w for p in pts for w in p["warnings"]]
        out.append(chosen)
    return out


def _median_half(halves: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The half-saturation run with the median p99 (rounds may differ in their rate)."""
    if not halves:
        return None
    ordered = sorted(halves, key=lambda p: p["latency"]["p99_ms"])
    return ordered[(len(ordered) - 1) // 2]


def _half_summary(prefix: str, half: dict[str, Any] | None) -> dict[str, Any]:
    if half is None:
        return {f"{prefix}_half_saturation_rate": None}
    return {
        f"{prefix}_half_saturation_rate": half["rate"],
        f"{prefix}_half_saturation_p50_ms": half["latency"]["p50_ms"],
        f"{prefix}_half_saturation_p99_ms": half["latency"]["p99_ms"],
        f"{prefix}_half_saturation_cpu_us_per_delivery": half["cpu_us_per_delivery"],
    }


def _same_rate(points: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    return next((p for p in points if p["rate"] == rate), points[0])


def _public(point: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in point.items() if k != "cdf_ms"}


def _saturation(points: list[dict[str, Any]]) -> float | None:
    return next((p["rate"] for p in points if p["saturated"]), None)


def _max_sustained(points: list[dict[str, Any]]) -> float | None:
    ok = [p["rate"] for p in points if not p["saturated"]]
    return max(ok) if ok else None


def _headline_point(
    ours: list[dict[str, Any]], base: list[dict[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """The rate the headline compares at: the highest rate both servers sustained.

    Without a common sustained rate (everything saturated), the lowest rate.
    """
    by_rate = {p["rate"]: p for p in base} if base else {}
    candidates = [p for p in ours if not p["saturated"]]
    if base is not None:
        candidates = [
            p for p in candidates if p["rate"] in by_rate and not by_rate[p["rate"]]["saturated"]
        ]
    chosen = max(candidates, key=lambda p: p["rate"]) if candidates else ours[0]
    out = {"imserver": chosen}
    if base is not None:
        out["baseline"] = by_rate.get(chosen["rate"], base[0])
    return out


def _flat(prefix: str, p: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{prefix}_rate": p["rate"],
        f"{prefix}_deliveries_per_s": p["deliveries_per_s"],
        f"{prefix}_p50_ms": p["latency"]["p50_ms"],
        f"{prefix}_p99_ms": p["latency"]["p99_ms"],
        f"{prefix}_max_ms": p["latency"]["max_ms"],
        f"{prefix}_cpu_us_per_delivery": p["cpu_us_per_delivery"],
        f"{prefix}_server_cpu_utilisation": p["server_cpu"]["utilisation"],
    }


def _ratio(ours: dict[str, Any], base: dict[str, Any]) -> float | None:
    a, b = ours.get("cpu_us_per_delivery"), base.get("cpu_us_per_delivery")
    if not a or not b:
        return None
    return round(float(a) / float(b), 3)


# -- plot ---------------------------------------------------------------------------
def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    metrics, series = result["metrics"], result["series"]
    targets = [t for t in ("floor", "baseline", "imserver") if t in metrics]
    colors = {"floor": "tab:green", "baseline": "tab:gray", "imserver": "tab:blue"}
    cfg = metrics["config"]
    publishers = cfg.get("publishers", 1)
    title = f"fanout: {cfg['members']} members, {cfg['size']}-byte messages" + (
        f", {publishers} publishers" if publishers > 1 else ""
    )
    if cfg["sweep"]:
        fig, axes = plt.subplots(2, 2, figsize=(12, 9))
        ax_tp, ax_lat, ax_cpu, ax_cdf = axes.flat
        for t in targets:
            pts = metrics[t]["points"]
            r = [p["rate"] for p in pts]
            ax_tp.plot(r, [p["deliveries_per_s"] for p in pts], "o-", color=colors[t], label=t)
            ax_lat.plot(
                r, [p["latency"]["p99_ms"] for p in pts], "o-", color=colors[t], label=f"{t} p99"
            )
            ax_lat.plot(
                r, [p["latency"]["p50_ms"] for p in pts], "x--", color=colors[t], label=f"{t} p50"
            )
            ax_cpu.plot(r, [p["cpu_us_per_delivery"] for p in pts], "o-", color=colors[t], label=t)
            half = metrics[t].get("half_saturation")
            if half:
                ax_lat.plot(
                    [half["rate"]],
                    [half["latency"]["p99_ms"]],
                    "*",
                    markersize=14,
                    color=colors[t],
                    label=f"{t} p99 at half saturation",
                )
        offered = sorted({p["rate"] for t in targets for p in metrics[t]["points"]})
        ax_tp.plot(
            offered,
            [x * (cfg["members"] + publishers) for x in offered],
            ":",
            color="k",
            label="offered",
        )
        for ax, ylabel in (
            (ax_tp, "deliveries/s achieved"),
            (ax_lat, "delivery latency (ms)"),
            (ax_cpu, "server CPU µs per delivery"),
        ):
            log_axis(ax)
            ax.set_xlabel("offered rate (messages/s)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        ax_tp.set_yscale("log")
        log_axis(ax_lat, "y")
        ax_tp.set_title("throughput vs offered rate")
        ax_lat.set_title("latency vs offered rate")
        ax_cpu.set_title("server CPU per delivery")
        rate = result["summary"].get("imserver_rate")
        _cdf(ax_cdf, series, targets, colors, str(rate), f"latency CDF at {rate:g} msg/s")
    else:
        fig, (ax_cdf, ax_cpu) = plt.subplots(1, 2, figsize=(12, 4.8))
        rate = cfg["rates"][0]
        _cdf(ax_cdf, series, targets, colors, str(rate), f"delivery latency CDF at {rate:g} msg/s")
        vals = [metrics[t]["points"][0]["cpu_us_per_delivery"] or 0 for t in targets]
        bars = ax_cpu.bar(targets, vals, color=[colors[t] for t in targets])
        ax_cpu.bar_label(bars, fmt="%.2f µs")
        ax_cpu.set_ylabel("server CPU µs per delivery")
        ratio = metrics.get("ratio_cpu_per_delivery")
        ax_cpu.set_title(f"CPU per delivery (ratio {ratio:g}×)" if ratio else "CPU per delivery")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cdf(
    ax: Any,
    series: dict[str, Any],
    targets: list[str],
    colors: dict[str, str],
    rate_key: str,
    title: str,
) -> None:
    for t in targets:
        s = series[t]
        cdf = s["cdf_ms"].get(rate_key)
        if not cdf:
            continue
        ax.plot(cdf, [g / 100 for g in s["cdf_grid"]], color=colors[t], label=t)
    log_axis(ax)
    ax.set_xlabel("send → delivery latency (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
