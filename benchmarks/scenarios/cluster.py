"""cluster: 1 node vs 3 nodes on one PostgreSQL and one Redis — what a node costs.

Both configurations run on PostgreSQL + Redis, so what changes is the number
of nodes, not the store or the bus. One group A of M members and a publisher
on node 0 sending at a fixed rate:

1. **1 node** — every member on node 0.
2. **3 nodes** — the same members round robin over nodes 0, 1, 2; the same
   publisher on node 0. Per node: deliveries to its own sockets and its CPU
   per local delivery. Latency of the members on the publisher's node
   against those on the others: the difference of the p50s is the Redis hop.
3. **Interest routing** — group B, as large as A, all members on node 0 but
   one on node 1, driven by a second publisher while A is silent. Node 2 has
   no member of B and should spend nothing on it (it never subscribes
   ``c:{B}``); node 1 pays one notice and one write per message.

Before each measured phase: a warm-up (not measured) and an idle window
(everyone connected, nothing sent: each node's idle CPU). From the phases
the cost model of :mod:`benchmarks.cluster_model` is fitted and projected to
N nodes on N machines. Here the 3 nodes share the server's one core (2 cores
in all): no speed-up can be shown; the per-node cost is what carries over.
"""

from __future__ import annotations

import argparse
import os
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.backends import BackendCpu, Backends
from benchmarks.cluster_report import NODES, assemble, plot
from benchmarks.common import (
    CpuSample,
    Pinning,
    Progress,
    cpu_between,
    cpu_sample,
    latency_summary,
    plan_pinning,
)
from benchmarks.scenarios import pick
from benchmarks.servers import (
    SUBPROTOCOL,
    Provisioned,
    ServerHandle,
    provision_imserver,
    start_imserver,
    stop,
    workspace,
)
from benchmarks.workers import Worker, WorkerError, start_worker, wait_connected

__all__ = ["DESCRIPTION", "add_arguments", "plot", "run"]

DESCRIPTION = (
    "1 vs 3 nodes on PostgreSQL + Redis: deliveries/s, CPU per delivery per node,"
    " Redis hop, interest routing, projection to N machines"
)
WARMUP_RATE, WARMUP_S = 10.0, 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, help="members of group A (default 300; quick 30)")
    p.add_argument("--rate", type=float, help="publisher messages/s (default 50; quick 20)")
    p.add_argument(
        "--duration", type=float, help="seconds per measured phase (default 10; quick 3)"
    )
    p.add_argument("--idle", type=float, help="seconds of each idle window (default 10; quick 1.5)")
    p.add_argument(
        "--group-b",
        type=int,
        help="members of group B on node 0, plus one on node 1 (default: --members − 1, so"
        " both groups are the same size: a notice carries the whole recipient list)",
    )
    p.add_argument("--size", type=int, default=200, help="message text bytes (default 200)")
    p.add_argument(
        "--drain", type=float, help="max seconds to wait for stragglers (default 10; quick 5)"
    )


@dataclass(slots=True)
class Crowd:
    """One member load generator: the node it is connected to and whom it holds."""

    worker: Worker
    node: int
    users: list[str]


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    q = args.quick
    cfg: dict[str, Any] = {
        "members": pick(args.members, 300, 30, q),
        "rate": pick(args.rate, 50.0, 20.0, q),
        "duration_s": pick(args.duration, 10.0, 3.0, q),
        "idle_s": pick(args.idle, 10.0, 1.5, q),
        "size": args.size,
        "drain_s": pick(args.drain, 10.0, 5.0, q),
        "nodes": NODES,
        "store": "postgres",
        "bus": "redis",
    }
    if args.store != "postgres" or args.bus != "redis":
        progress.note("cluster always runs on PostgreSQL + Redis (--store/--bus ignored)")
    pinning = plan_pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        progress.note("CPU pinning not available; nodes and load share CPUs (noisier)")
    # Group B as large as A by default: every node that hears a message also
    # reads its whole recipient list, so b depends on the group's size.
    cfg["group_b"] = args.group_b if args.group_b is not None else cfg["members"] - 1
    a_users = [f"m{i:05d}" for i in range(cfg["members"])]
    b_users = [f"b{i:05d}" for i in range(cfg["group_b"])]
    lone = a_users[1]  # B's one member on node 1 (A's member 1 lives there)
    # Three pools share the one PostgreSQL with whatever else runs on it.
    with workspace("cluster", "postgres", "redis", pool_max_size=5) as (workdir, backends):
        progress.update("provisioning", f"{len(a_users) + len(b_users)} users, {NODES} configs")
        prov, _, _ = provision_imserver(
            workdir,
            ["pubA", "pubB", *a_users, *b_users],
            synchronous=args.synchronous,
            max_group_members=max(1000, cfg["members"] + 10),
            backends=backends,
            nodes=NODES,
        )
        r = ClusterRun(cfg, pinning, progress, workdir, prov, Services(backends))
        try:
            r.start_node(0)
            pub_a = r.publisher("pubA", a_users)
            pub_b = r.publisher("pubB", [*b_users, lone])
            a_set, b_set = frozenset(a_users), frozenset([*b_users, lone])
            # Member i is on node i mod 3 in the 3-node phase; the same three
            # load generators hold the same users in the 1-node phase.
            spread = [[u for i, u in enumerate(a_users) if i % NODES == k] for k in range(NODES)]

            crowds = r.crowds([(f"one-{k}", 0, spread[k]) for k in range(NODES)], "1 node")
            idle_1, one = r.phase("1 node", 1, pub_a, crowds, a_set)
            r.retire(crowds)

            for i in range(1, NODES):
                r.start_node(i)
            crowds = r.crowds([(f"three-{k}", k, spread[k]) for k in range(NODES)], "3 nodes")
            idle_3, three = r.phase("3 nodes", 3, pub_a, crowds, a_set)

            crowds += r.crowds([("group-b", 0, b_users)], "group B")
            idle_b, routing = r.phase("group B", 5, pub_b, crowds, b_set)
            info = {
                "pinned": [s.pinned for s in r.servers],
                "backends": backends.as_json(),
                "redis_pid_found": r.services.redis_pid is not None,
            }
        finally:
            r.close()
    idle = {"one_node": idle_1, "three_nodes": idle_3, "routing": idle_b}
    result = assemble(cfg, pinning, info, idle, one, three, routing)
    for w in result["metrics"].get("warnings", []):
        progress.note(w)
    return result


# -- running --------------------------------------------------------------------------
@dataclass(slots=True)
class ClusterRun:
    """The nodes and load generators of one run, and how a phase is driven."""

    cfg: dict[str, Any]
    pinning: Pinning
    progress: Progress
    workdir: Path
    prov: Provisioned
    services: Services
    servers: list[ServerHandle] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    @property
    def lifetime(self) -> float:
        c = self.cfg
        return 300.0 + 8 * float(c["duration_s"] + c["drain_s"] + c["idle_s"])

    def start_node(self, i: int) -> None:
        self.progress.update(f"starting node {i}")
        n = self.prov.nodes[i]
        self.servers.append(
            start_imserver(
                self.workdir, n.config_path, n.ws_port, n.http_port, self.pinning, name=f"node-{i}"
            )
        )

    def _worker(self, name: str, kind: str, node: int, users: list[str]) -> Worker:
        w = start_worker(
            name,
            kind,
            port=self.prov.nodes[node].ws_port,
            users=[(u, self.prov.tokens[u]) for u in users],
            pinning=self.pinning,
            max_lifetime_s=self.lifetime,
            subprotocol=SUBPROTOCOL,
        )
        self.workers.append(w)
        return w

    def publisher(self, name: str, group: list[str]) -> Worker:
        """A publisher on node 0 that creates its group (the members need not be online)."""
        pub = self._worker(name, "publisher", 0, [name])
        pub.call(("connect",))
        self.progress.update("creating the groups", name)
        pub.call(("create_group", group, 500), timeout=120)
        return pub

    def crowds(self, specs: list[tuple[str, int, list[str]]], label: str) -> list[Crowd]:
        """Start member load generators (name, node, users) and connect them all."""
        out = [Crowd(self._worker(n, "counted_members", k, u), k, u) for n, k, u in specs]
        wait_connected(
            [c.worker for c in out],
            lambda up, total: self.progress.update(f"{label}: members connecting", f"{up}/{total}"),
            timeout=180,
        )
        return out

    def retire(self, crowds: list[Crowd]) -> None:
        for c in crowds:
            c.worker.stop()
            self.workers.remove(c.worker)

    def phase(
        self,
        label: str,
        number: int,
        pub: Worker,
        crowds: list[Crowd],
        members: frozenset[str],
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Warm-up (phase ``number``, not kept), idle window, measured phase ``number + 1``."""
        warm = _Phase(
            f"{label} warm-up", number, WARMUP_RATE, WARMUP_S, pub, crowds, members, warmup=True
        )
        _measure(warm, self)
        idle_windows = _idle(self.servers, self.cfg["idle_s"], label, self.progress)
        rate, duration = self.cfg["rate"], self.cfg["duration_s"]
        return idle_windows, _measure(
            _Phase(label, number + 1, rate, duration, pub, crowds, members), self
        )

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        for s in self.servers:
            stop(s)


@dataclass(frozen=True, slots=True)
class _Phase:
    label: str
    number: int
    rate: float
    duration: float
    publisher: Worker
    crowds: list[Crowd]
    #: The members of the conversation sent to (everyone else must get nothing).
    members: frozenset[str]
    warmup: bool = False


class Services:
    """CPU of the shared services over a phase: the run database's backends, and Redis.

    Neither is pinned and both serve whatever else runs on this machine (the
    test suite's Redis, other databases): their figures are an upper bound of
    what this run cost them.
    """

    def __init__(self, backends: Backends) -> None:
        self.db = BackendCpu(backends.database)
        self.redis_pid = _redis_pid(backends.redis_url)
        self._redis_before: CpuSample | None = None

    def start(self) -> None:
        self.db.start()
        self._redis_before = self._redis()

    def poll(self) -> None:
        self.db.poll()

    def result(self) -> dict[str, Any]:
        before, after = self._redis_before, self._redis()
        return {
            "postgres": self.db.result(),
            "redis": cpu_between(before, after) if before and after else None,
        }

    def _redis(self) -> CpuSample | None:
        if self.redis_pid is None:
            return None
        try:
            return cpu_sample(self.redis_pid)
        except OSError:
            return None


def _redis_pid(url: str) -> int | None:
    """The local ``redis-server`` serving ``url`` (its title is ``redis-server HOST:PORT``)."""
    needle = f":{urlsplit(url).port or 6379}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read(256).split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"redis-server") and title.endswith(needle):
            return int(entry)
    return None


def _cpu_s(window: dict[str, float]) -> float:
    """schedstat's nanoseconds when present (a node's share is a few clock ticks), else ticks."""
    ns = window.get("cpu_s_schedstat")
    return ns if ns is not None and ns >= 0 else window["cpu_s"]


def _idle(
    servers: list[ServerHandle], seconds: float, label: str, progress: Progress
) -> list[dict[str, Any]]:
    """Each node's CPU with everyone connected and nothing sent: the ``c`` of the model."""
    progress.update(f"{label}: idle window", f"{seconds:g}s")
    before = [cpu_sample(s.pid) for s in servers]
    time.sleep(seconds)
    out = []
    for s, b in zip(servers, before, strict=True):
        window = cpu_between(b, cpu_sample(s.pid))
        out.append({**window, "cpu_us_per_s": round(_cpu_s(window) * 1e6 / window["wall_s"], 1)})
    return out


def _measure(ph: _Phase, r: ClusterRun) -> dict[str, Any]:
    """Run one paced phase: each node's CPU from the first send until the last delivery."""
    servers, cfg = r.servers, r.cfg
    load = [ph.publisher, *(c.worker for c in ph.crowds)]
    node_before = [cpu_sample(s.pid) for s in servers]
    load_before = [cpu_sample(w.pid) for w in load]
    r.services.start()
    ph.publisher.send(("phase", ph.number, ph.rate, ph.duration, cfg["size"], cfg["drain_s"]))
    t0, limit = time.monotonic(), ph.duration * 3 + cfg["drain_s"] + 60
    while not ph.publisher.poll(0.2):
        for s in servers:
            s.check_alive()
        r.services.poll()
        r.progress.update(ph.label, f"{min(time.monotonic() - t0, ph.duration):.0f}s")
        if time.monotonic() - t0 > limit:
            raise WorkerError(f"{ph.label}: the publisher did not finish in {limit:.0f}s")
    sent_info = ph.publisher.receive()
    sent = sent_info["sent"]
    expect = [sent * sum(u in ph.members for u in c.users) for c in ph.crowds]
    deadline = time.monotonic() + cfg["drain_s"]
    while True:
        got = [c.worker.call(("phase_stats", ph.number))["count"] for c in ph.crowds]
        echo = ph.publisher.call(("echo_stats", ph.number))
        r.services.poll()
        r.progress.update(ph.label, f"draining {sum(got) + echo['echo']}/{sum(expect) + sent}")
        done = all(g >= e for g, e in zip(got, expect, strict=True)) and echo["echo"] >= sent
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    node_after = [cpu_sample(s.pid) for s in servers]
    load_after = [cpu_sample(w.pid) for w in load]
    shared = r.services.result()
    collected = [c.worker.call(("collect", ph.number)) for c in ph.crowds]
    arrivals = [c.worker.call(("arrivals", ph.number, sent)) for c in ph.crowds]
    if ph.warmup:
        return {}

    check = _exactly_once(arrivals, ph.members, sent, echo["echo"])
    last_ns = max([c["last_ns"] for c in collected] + [echo["last_ns"]])
    span_s = max((last_ns - sent_info["first_ns"]) / 1e9, 1e-9)
    nodes = []
    for k, (b, a) in enumerate(zip(node_before, node_after, strict=True)):
        window = cpu_between(b, a)
        local = sum(
            col["count"] for col, c in zip(collected, ph.crowds, strict=True) if c.node == k
        )
        local += echo["echo"] if k == 0 else 0  # the publisher's own socket is on node 0
        cpu_s = _cpu_s(window)
        nodes.append(
            {
                "node": k,
                "local_deliveries": local,
                "deliveries_per_s": round(local / span_s, 1),
                "cpu": window,
                "cpu_s": round(cpu_s, 6),
                "cpu_us_per_local_delivery": round(cpu_s * 1e6 / local, 3) if local else None,
                "cpu_us_per_message": round(cpu_s * 1e6 / sent, 3) if sent else None,
            }
        )
    latency, cdf = _latencies(collected, ph.crowds)
    load_s = sum(_cpu_s(cpu_between(b, a)) for b, a in zip(load_before, load_after, strict=True))
    deliveries = sum(n["local_deliveries"] for n in nodes)
    for problem in check["problems"]:
        r.progress.note(f"error: {ph.label}: {problem}")
    return {
        "label": ph.label,
        "rate": ph.rate,
        "sent": sent,
        "send_rate_actual": round(sent / max(sent_info["send_span_s"], 1e-9), 2),
        "deliveries": deliveries,
        "expected_deliveries": sent * (len(ph.members) + 1),
        "deliveries_per_s": round(deliveries / span_s, 1),
        "span_s": round(span_s, 3),
        "nodes": nodes,
        **latency,
        "ack_latency": latency_summary(array("q", sent_info["ack_lat_us"]))[0],
        "unacked": sent_info["unacked"],
        "errors": sent_info["errors"],
        "closes": sent_info["closes"],
        "exactly_once": check,
        "loadgen_utilisation": round(load_s / span_s, 3),
        "shared_services": shared,
        "cdf_ms": cdf,
    }


def _latencies(
    collected: list[dict[str, Any]], crowds: list[Crowd]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Latency summaries and CDFs: all members, the publisher's node (0), the others, per node."""
    by_node: dict[int, array[int]] = {}
    for col, c in zip(collected, crowds, strict=True):
        by_node.setdefault(c.node, array("q")).frombytes(col["lat_us"])
    same = by_node.get(0, array("q"))
    cross = array("q")
    for k, lat in sorted(by_node.items()):
        if k != 0:
            cross.extend(lat)
    every = array("q", same)
    every.extend(cross)
    groups = {"all": every, "same_node": same, "other_nodes": cross}
    summaries = {k: latency_summary(v) if len(v) else None for k, v in groups.items()}
    per_node = {str(k): latency_summary(v) for k, v in by_node.items() if len(v)}
    return (
        {
            **{f"latency_{k}": s[0] if s else None for k, s in summaries.items()},
            "latency_by_node": {k: s[0] for k, s in per_node.items()},
        },
        {
            **{k: s[1] if s else [] for k, s in summaries.items()},
            "by_node": {k: s[1] for k, s in per_node.items()},
        },
    )


def _exactly_once(
    arrivals: list[dict[str, list[int]]], members: frozenset[str], sent: int, echo: int
) -> dict[str, Any]:
    """Every member got each of the ``sent`` messages once; nobody else got any."""
    lost = duplicates = strays = 0
    problems: list[str] = []
    for per_user in arrivals:
        for user, (distinct, dups, beyond) in per_user.items():
            wanted = sent if user in members else 0
            missing = max(0, wanted - distinct)
            extra = (0 if user in members else distinct) + beyond
            lost, duplicates, strays = lost + missing, duplicates + dups, strays + extra
            if (missing or dups or extra) and len(problems) < 10:
                problems.append(
                    f"{user}: {distinct} of {wanted} messages, {dups} duplicates,"
                    f" {extra} unexpected"
                )
    if echo != sent:
        problems.append(f"the publisher's own socket got {echo} of {sent} messages")
        lost += max(0, sent - echo)
        duplicates += max(0, echo - sent)
    return {
        "members": len(members),
        "lost": lost,
        "duplicates": duplicates,
        "unexpected": strays,
        "problems": problems,
    }
