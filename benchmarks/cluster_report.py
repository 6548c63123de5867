"""The ``cluster`` scenario's result: the fitted cost model, the summary, the plot.

Pure: it reads the measured phases (dicts from ``benchmarks/scenarios/cluster.py``)
and returns the documents; ``plot`` draws the PNG from a saved result alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import cluster_model
from benchmarks.cluster_model import NodeWindow
from benchmarks.common import CDF_GRID, Pinning
from benchmarks.plotting import log_axis, pyplot

NODES = 3
TARGET_RATIO = 1.3  # 3-node CPU per delivery ÷ 1-node (the target)
TARGET_HOP_MS = 2.0  # cross-node p50 − same-node p50 (the target)
NOTE_CORES = "3 nodes on this machine share 2 cores: no speed-up can be shown; see per-node cost"


def _windows(
    name: str, phase: dict[str, Any], idle_us_per_s: list[float], sender: int = 0
) -> list[NodeWindow]:
    """The model's view of a phase: a node hears every message iff it has a local member."""
    return [
        NodeWindow(
            phase=name,
            node=n["node"],
            local_deliveries=n["local_deliveries"],
            heard=phase["sent"] if n["local_deliveries"] else 0,
            sent=phase["sent"] if n["node"] == sender else 0,
            cpu_us=n["cpu_s"] * 1e6,
            seconds=phase["span_s"],
            idle_us_per_s=idle_us_per_s[n["node"]],
        )
        for n in phase["nodes"]
    ]


def idle_rates(idle: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Each node's idle CPU (µs/s) to subtract in each phase.

    The idle cost is lumpy — WebSocket pings and the presence re-stamp come
    every 20 s — so a window of a few seconds catches one or none. Nodes 1
    and 2 hold the same sessions in both 3-node idle windows (before group A's
    and before group B's phase), so theirs is the time-weighted mean of both;
    node 0 gains group B's sessions in between and keeps each window's own.
    """
    three, before_b = idle["three_nodes"], idle["routing"]
    pooled = [
        (a["cpu_us_per_s"] * a["wall_s"] + b["cpu_us_per_s"] * b["wall_s"])
        / (a["wall_s"] + b["wall_s"])
        for a, b in zip(three, before_b, strict=True)
    ]
    return {
        "one_node": [w["cpu_us_per_s"] for w in idle["one_node"]],
        "three_nodes": [three[0]["cpu_us_per_s"], *pooled[1:]],
        "routing": [before_b[0]["cpu_us_per_s"], *pooled[1:]],
    }


def _model(
    one: dict[str, Any],
    three: dict[str, Any],
    routing: dict[str, Any],
    idle: dict[str, list[dict[str, Any]]],
) -> tuple[cluster_model.CostModel, dict[str, Any]]:
    """Fit a, b on the nodes that send nothing (3-node nodes 1, 2: a third of the members;
    group B's node 1: one member), s on the 3-node sender; and the idle-node check."""
    rates = idle_rates(idle)
    w1 = _windows("1 node", one, rates["one_node"])
    w3 = _windows("3 nodes", three, rates["three_nodes"])
    wb = _windows("group B", routing, rates["routing"])
    model = cluster_model.fit([w3[1], w3[2], wb[1]], w3[0], rates["three_nodes"])
    # Node 2 in group B: no member, so by design it hears nothing; what it spent
    # beyond its idle CPU is what a message of someone else's conversation costs.
    # Noise around 0 (it may come out negative); all its CPU is the upper bound.
    n_b = routing["sent"]
    idle_node = round(wb[2].busy_us / n_b, 3) if n_b else None
    idle_node_max = round(wb[2].cpu_us / n_b, 3) if n_b else None
    doc: dict[str, Any] = {
        **model.as_json(),
        "c_us_per_s_idle_by_node": [round(x, 1) for x in rates["three_nodes"]],
        "idle_rates_used": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "s_us_per_message_sent_1node": round(cluster_model.sender_cost(model.a, model.b, w1[0]), 1),
        "fit_windows": [
            {
                "phase": w.phase,
                "node": w.node,
                "local_deliveries": w.local_deliveries,
                "heard": w.heard,
                "busy_us": round(w.busy_us),
            }
            for w in (w3[1], w3[2], wb[1])
        ],
        "checks": cluster_model.checks(model, [*w1, *w3, *wb]),
        "idle_node": {
            "node": wb[2].node,
            "local_deliveries": wb[2].local_deliveries,
            "cpu_us_per_s_during_group_b": round(wb[2].cpu_us / wb[2].seconds, 1),
            "cpu_us_per_s_idle": round(wb[2].idle_us_per_s, 1),
            "cpu_us_per_message": idle_node,
            "cpu_us_per_message_upper_bound": idle_node_max,
            "b_us_per_message_heard": round(model.b, 2),
        },
        "formula": "CPU per node = a·(local deliveries) + b·(messages heard: conversations"
        " with a local member) + s·(messages sent through the node) + c·(seconds)",
    }
    return model, doc


def assemble(
    cfg: dict[str, Any],
    pinning: Pinning,
    info: dict[str, Any],
    idle: dict[str, list[dict[str, Any]]],
    one: dict[str, Any],
    three: dict[str, Any],
    routing: dict[str, Any],
) -> dict[str, Any]:
    """The scenario's ``metrics``, ``series`` and ``summary`` from its measured phases."""
    one_cpu = one["nodes"][0]["cpu_us_per_local_delivery"]
    per_node = [n["cpu_us_per_local_delivery"] for n in three["nodes"]]
    three_cpu = round(sum(per_node) / len(per_node), 3) if all(per_node) else None
    ratio = round(three_cpu / one_cpu, 3) if one_cpu and three_cpu else None
    same = three["latency_same_node"]["p50_ms"]
    cross = three["latency_other_nodes"]["p50_ms"]
    hop = round(cross - same, 3)
    model, model_doc = _model(one, three, routing, idle)
    idle_node_us = model_doc["idle_node"]["cpu_us_per_message"]
    # Conservative: all of the idle node's CPU during group B, per B message.
    upper = model_doc["idle_node"]["cpu_us_per_message_upper_bound"]
    projection = cluster_model.project(model, cfg["members"] + 1, cfg["rate"], upper)
    phases = {"one_node": one, "three_nodes": three, "routing": routing}
    errors = [f"{k}: {e}" for k, p in phases.items() for e in p["exactly_once"]["problems"]]
    errors += [f"{k}: error answers {p['errors']}" for k, p in phases.items() if p["errors"]]
    errors += [f"{k}: {p['unacked']} sends unanswered" for k, p in phases.items() if p["unacked"]]
    warnings = [f"{k}: connections closed: {p['closes']}" for k, p in phases.items() if p["closes"]]

    def total(key: str) -> int:
        return sum(p["exactly_once"][key] for p in phases.values())

    def shared_us(phase: dict[str, Any], which: str) -> float | None:
        used = phase["shared_services"][which]
        if not used or not phase["sent"]:
            return None
        cpu_s = float(used.get("cpu_s_schedstat", used["cpu_s"]))
        return round(cpu_s * 1e6 / float(phase["sent"]), 1)

    metrics: dict[str, Any] = {
        "config": cfg,
        "pinning": pinning.as_json(),
        **info,
        "idle": idle,
        **{k: {x: y for x, y in p.items() if x != "cdf_ms"} for k, p in phases.items()},
        "model": model_doc,
        "projection": projection,
        "notes": [
            NOTE_CORES,
            "every node, the publisher's included, delivers what it hears on Redis: a"
            " same-node delivery also goes publish → Redis → back; the hop is what being on"
            " another node adds",
            "the nodes share CPU 0, so a cross-node delivery also waits for the other node's"
            " turn on that core",
            "node CPU from /proc/<pid>/task/*/schedstat (ns); clock ticks beside it",
            "PostgreSQL and Redis are unpinned services of this machine, shared with anything"
            " else running on it; their CPU is not in the nodes' figures",
        ],
        "errors": errors,
    }
    if warnings:
        metrics["warnings"] = warnings
    summary: dict[str, Any] = {
        "members": cfg["members"],
        "rate": cfg["rate"],
        "nodes": NODES,
        "deliveries_per_s_1node": one["deliveries_per_s"],
        "deliveries_per_s_3nodes": three["deliveries_per_s"],
        "cpu_us_per_delivery_1node": one_cpu,
        "cpu_us_per_delivery_3nodes": three_cpu,
        "cpu_us_per_delivery_by_node_3nodes": per_node,
        "ratio_per_delivery": ratio,
        "p50_ms_1node": one["latency_all"]["p50_ms"],
        "same_node_p50_ms": same,
        "cross_node_p50_ms": cross,
        "redis_hop_p50_ms": hop,
        "ack_p50_ms_1node": one["ack_latency"]["p50_ms"],
        "ack_p50_ms_3nodes": three["ack_latency"]["p50_ms"],
        "idle_node_cpu_us_per_message": idle_node_us,
        "idle_node_cpu_us_per_message_upper_bound": model_doc["idle_node"][
            "cpu_us_per_message_upper_bound"
        ],
        "model_a_us_per_delivery": model_doc["a_us_per_local_delivery"],
        "model_b_us_per_message": model_doc["b_us_per_message_heard"],
        "model_s_us_per_message": model_doc["s_us_per_message_sent"],
        "postgres_cpu_us_per_message": shared_us(three, "postgres"),
        "redis_cpu_us_per_message_1node": shared_us(one, "redis"),
        "redis_cpu_us_per_message_3nodes": shared_us(three, "redis"),
        "lost": total("lost"),
        "duplicates": total("duplicates"),
        "unexpected": total("unexpected"),
        "errors": len(errors),
        "targets": {
            "ratio_per_delivery": _target(TARGET_RATIO, ratio),
            "redis_hop_p50_ms": _target(TARGET_HOP_MS, hop),
        },
        "note": NOTE_CORES,
    }
    series = {"cdf_grid": CDF_GRID, "cdf_ms": {k: p["cdf_ms"] for k, p in phases.items()}}
    return {"metrics": metrics, "series": series, "summary": summary}


def _target(target: float, measured: float | None) -> dict[str, Any]:
    return {
        "target": target,
        "measured": measured,
        "met": measured is not None and measured <= target,
    }


# -- plot -----------------------------------------------------------------------------
def plot(result: dict[str, Any], path: Path) -> None:
    """CPU per delivery per node (1 vs 3), latency CDF same vs other nodes, the projection."""
    plt = pyplot()
    metrics, series, summary = result["metrics"], result["series"], result["summary"]
    fig, (ax_cpu, ax_cdf, ax_proj) = plt.subplots(1, 3, figsize=(17, 5))

    nodes3 = metrics["three_nodes"]["nodes"]
    labels = ["1 node\nnode 0", *(f"3 nodes\nnode {n['node']}" for n in nodes3)]
    values = [summary["cpu_us_per_delivery_1node"] or 0.0]
    values += [n["cpu_us_per_local_delivery"] or 0.0 for n in nodes3]
    bars = ax_cpu.bar(labels, values, color=["tab:gray", *["tab:blue"] * len(nodes3)])
    ax_cpu.bar_label(bars, fmt="%.2f µs")
    if summary["cpu_us_per_delivery_3nodes"]:
        mean = summary["cpu_us_per_delivery_3nodes"]
        ax_cpu.axhline(mean, color="tab:blue", ls="--", lw=1, label=f"3-node mean {mean:g} µs")
    if summary["cpu_us_per_delivery_1node"]:
        limit = TARGET_RATIO * summary["cpu_us_per_delivery_1node"]
        ax_cpu.axhline(limit, color="tab:red", ls=":", lw=1, label=f"target {TARGET_RATIO:g}×")
    ratio = summary["ratio_per_delivery"]
    ax_cpu.set_title(f"CPU per local delivery (3 ÷ 1 = {ratio:g})" if ratio else "CPU per delivery")
    ax_cpu.set_ylabel("node CPU µs per local delivery")
    ax_cpu.legend(fontsize=8)

    grid = [g / 100 for g in series["cdf_grid"]]
    for phase, key, label, color in (
        ("one_node", "all", "1 node", "tab:gray"),
        ("three_nodes", "same_node", "3 nodes: publisher's node", "tab:blue"),
        ("three_nodes", "other_nodes", "3 nodes: other nodes", "tab:orange"),
    ):
        cdf = series["cdf_ms"][phase].get(key)
        if cdf:
            ax_cdf.plot(cdf, grid, color=color, label=label)
    log_axis(ax_cdf)
    ax_cdf.set_xlabel("send → delivery latency (ms)")
    ax_cdf.set_ylabel("fraction of deliveries")
    ax_cdf.set_title(f"latency CDF (Redis hop at p50: {summary['redis_hop_p50_ms']:g} ms)")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(fontsize=8)

    rows = metrics["projection"]["rows"]
    ns = [row["nodes"] for row in rows]
    ax_proj.plot(ns, [row["deliveries_per_s_cluster"] for row in rows], "o-", label="cluster")
    ax_proj.plot(ns, [row["deliveries_per_s_per_node"] for row in rows], "x--", label="per node")
    log_axis(ax_proj)
    log_axis(ax_proj, "y")
    ax_proj.set_xlabel("nodes (one core each, on their own machines)")
    ax_proj.set_ylabel("deliveries/s at saturation (projected)")
    ax_proj.set_title(f"projection: one group of {metrics['config']['members']} members")
    ax_proj.grid(True, which="both", alpha=0.3)
    ax_proj.legend(fontsize=8)

    cfg = metrics["config"]
    fig.suptitle(
        f"cluster: {cfg['members']} members, {cfg['rate']:g} msg/s, PostgreSQL + Redis."
        f" {NOTE_CORES}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
