"""Shared helpers: machine facts, CPU sampling, percentiles, progress, pinning.

Kept free of third-party imports (matplotlib lives in the scenarios' plot
functions) so that the orchestrator and the load-generator processes start
fast and measure only what they mean to measure.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Quantiles (in percent) kept in the result JSON to redraw a latency CDF
#: without storing every sample: fine steps in the tail, where it matters.
CDF_GRID: tuple[float, ...] = (
    *range(0, 99),
    *(99 + i / 10 for i in range(10)),
    99.95,
    99.99,
    100.0,
)


# -- progress -------------------------------------------------------------------
class Progress:
    """A one-line progress indicator on stderr (stdout is reserved for the result).

    On a terminal the line is rewritten in place; otherwise (CI logs) a line is
    printed when the stage changes or at most once every two seconds, so logs
    stay readable without an extra dependency.
    """

    def __init__(self, scenario: str, *, enabled: bool = True) -> None:
        self._prefix = f"[{scenario}]"
        self._enabled = enabled
        self._tty = sys.stderr.isatty()
        self._last_stage = ""
        self._last_print = 0.0
        self._width = 0
        self._t0 = time.monotonic()

    def update(self, stage: str, detail: str = "") -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        text = f"{self._prefix} {now - self._t0:6.1f}s {stage}" + (f": {detail}" if detail else "")
        if self._tty:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self._width = len(text)
        elif stage != self._last_stage or now - self._last_print >= 2.0:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
            self._last_print = now
        self._last_stage = stage

    def note(self, message: str) -> None:
        """A message that must stay visible (a warning), on its own line."""
        if self._tty and self._width:
            sys.stderr.write("\n")
            self._width = 0
        sys.stderr.write(f"{self._prefix} {message}\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self._enabled and self._tty and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._width = 0


# -- statistics -----------------------------------------------------------------
def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for no values)."""
    if not sorted_values:
        return 0.0
    if pct <= 0:
        return float(sorted_values[0])
    rank = min(len(sorted_values), max(1, round(pct / 100 * len(sorted_values) + 0.5 - 1e-9)))
    return float(sorted_values[rank - 1])


def latency_summary(samples_us: Iterable[int]) -> tuple[dict[str, float], list[float]]:
    """Summary (ms) and the CDF quantiles (ms, on ``CDF_GRID``) of latency samples in µs."""
    values = sorted(samples_us)
    ms = [v / 1000 for v in values] if values else []
    summary = {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(ms[-1], 3) if ms else 0.0,
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else 0.0,
    }
    cdf = [round(percentile(ms, q), 3) for q in CDF_GRID]
    return summary, cdf


# -- CPU time of a process ------------------------------------------------------
@dataclass(slots=True, frozen=True)
class CpuSample:
    """CPU time of one process (all its threads) at one wall-clock moment."""

    wall: float  # time.monotonic()
    utime: int  # user-mode clock ticks (/proc/<pid>/stat)
    stime: int  # kernel-mode clock ticks (for sockets: mostly the loopback TCP path)
    sched_ns: int  # sum of the threads' run time in ns (/proc/<pid>/task/*/schedstat), or -1


def cpu_sample(pid: int) -> CpuSample:
    """utime+stime of ``pid`` from /proc/<pid>/stat (and the finer schedstat, if present).

    /proc/<pid>/stat counts every thread of the process — for imserver that
    includes the SQLite writer and reader threads, which is the honest cost.
    Its resolution is one clock tick (usually 10 ms); schedstat's nanoseconds
    are recorded alongside as a cross-check for short windows.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name may contain spaces or parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat
    sched = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                sched += int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        sched = -1
    return CpuSample(time.monotonic(), utime, stime, sched)


def cpu_between(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds (ticks and schedstat) and utilisation between two samples."""
    wall = max(after.wall - before.wall, 1e-9)
    user_s = (after.utime - before.utime) / CLK_TCK
    sys_s = (after.stime - before.stime) / CLK_TCK
    cpu_s = user_s + sys_s
    out = {
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu_s, 4),
        "user_s": round(user_s, 4),
        "sys_s": round(sys_s, 4),
        "utilisation": round(cpu_s / wall, 4),
    }
    if before.sched_ns >= 0 and after.sched_ns >= 0:
        out["cpu_s_schedstat"] = round((after.sched_ns - before.sched_ns) / 1e9, 4)
    return out


# -- memory and limits of a process -------------------------------------------
def proc_status_kb(pid: int) -> dict[str, int]:
    """Memory fields of /proc/<pid>/status in KiB: VmRSS, VmHWM, RssAnon, RssFile, VmSize.

    ``VmRSS`` is what the process holds in RAM (all threads); ``RssAnon`` is
    its heap and stacks, the part that grows with connections. Kernel memory
    for sockets (buffers, TCP state) is not in either: the kernel accounts it
    separately (see ``/proc/net/sockstat``).
    """
    out: dict[str, int] = {}
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile", "VmSize"}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in wanted:
                out[name] = int(rest.split()[0])
    return out


def nofile_limits(pid: int) -> tuple[int, int] | None:
    """(soft, hard) ``Max open files`` of a running process, from /proc/<pid>/limits."""
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return (
                        -1 if soft == "unlimited" else int(soft),
                        -1 if hard == "unlimited" else int(hard),
                    )
    except (OSError, ValueError):
        pass
    return None


def tcp_sockstat() -> dict[str, int]:
    """The ``TCP:`` line of /proc/net/sockstat (inuse, orphan, tw, alloc, mem in pages)."""
    try:
        with open("/proc/net/sockstat", encoding="ascii") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()[1:]
                    return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    except (OSError, ValueError):
        pass
    return {}


# -- CPU pinning ----------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Pinning:
    """Which CPUs the server and the load side use (empty sets: not pinned)."""

    server: frozenset[int]
    load: frozenset[int]

    @property
    def enabled(self) -> bool:
        return bool(self.server)

    def as_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "server_cpus": sorted(self.server),
            "load_cpus": sorted(self.load),
        }


def plan_pinning(requested: bool) -> Pinning:
    """Server on the first allowed CPU, everything else (load, orchestrator) on the rest.

    Why: on a 2-core machine an unpinned load generator competes with the
    server for the same core and the scheduler moves both around, which makes
    CPU-per-delivery and latency noisy. Pinning is skipped (not an error) when
    there is only one CPU or when the kernel/container refuses it.
    """
    none = Pinning(frozenset(), frozenset())
    if not requested or not hasattr(os, "sched_setaffinity"):
        return none
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except OSError:
        return none
    if len(allowed) < 2:
        return none
    plan = Pinning(frozenset(allowed[:1]), frozenset(allowed[1:]))
    if not pin_pid(0, plan.load):  # the orchestrator itself lives on the load side
        return none
    return plan


def pin_pid(pid: int, cpus: frozenset[int]) -> bool:
    """Pin one thread (``pid`` 0: the caller); False if not permitted."""
    if not cpus:
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


def pin_process_tree(pid: int, cpus: frozenset[int]) -> bool:
    """Pin every thread of a running process (threads started later inherit it)."""
    if not cpus:
        return False
    ok = True
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        ok = pin_pid(tid, cpus) and ok
    return ok


def raise_nofile_limit() -> None:
    """Raise the open-files soft limit to the hard one (children inherit it).

    A 1,000-member fan-out needs ~1,000 sockets in the server and as many in
    the load generator; the common default soft limit of 1,024 is too tight.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


#: TCP counters that explain slow connects: a full accept queue drops SYNs
#: (ListenOverflows/ListenDrops) and the client retransmits them after 1 s, 3 s, …
TCP_EXT_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPSynRetrans",
    "SyncookiesSent",
    "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
)


def tcp_ext_counters() -> dict[str, int]:
    """Machine-wide ``TcpExt`` counters from /proc/net/netstat (take deltas)."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:") and values.startswith("TcpExt:"):
            pairs = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            return {k: int(pairs[k]) for k in TCP_EXT_COUNTERS if k in pairs}
    return {}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if k in before}


def listen_backlog(port: int) -> int | None:
    """The accept-queue length of the socket listening on 127.0.0.1:``port`` (``ss``)."""
    try:
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "LISTEN":
            return int(parts[2])
    return None


def check_fd_budget(need_server: int, need_worker: int) -> dict[str, Any]:
    """Fail early, with the fix, when the open-files limit cannot hold the sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and soft < max(need_server, need_worker):
        raise RuntimeError(
            f"open-files limit {soft} (hard {hard}) is below the {max(need_server, need_worker)}"
            " sockets needed: raise `ulimit -Hn`, or run fewer --connections or more --procs"
        )
    return {"soft": soft, "hard": hard}


# -- facts for the result file --------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (tmpfs makes fsync free: worth knowing)."""
    best, fstype = "", "unknown"
    target = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, fstype = parts[1], parts[2]
    except OSError:
        pass
    return fstype


def fsync_ms(directory: Path, writes: int = 50, budget_s: float = 2.0) -> float | None:
    """Mean time of a 4 KiB write + fsync in ``directory`` (ms).

    ``synchronous=FULL`` costs one fsync per group commit; on a VM whose disk
    cache absorbs fsync this is ~0.1 ms and FULL looks as cheap as NORMAL.
    Recorded so that readers can tell which kind of machine produced a number.
    """
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix="fsync-probe-")
    except OSError:
        return None
    done, start = 0, time.perf_counter()
    try:
        while done < writes and time.perf_counter() - start < budget_s:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            done += 1
    finally:
        os.close(fd)
        os.unlink(name)
    return round((time.perf_counter() - start) / max(done, 1) * 1000, 3)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 0
    return {
        "nproc": allowed,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "websockets": _version("websockets"),
        "uvloop": _version("uvloop"),
        "clk_tck": CLK_TCK,
    }


def git_info() -> dict[str, Any]:
    """The commit measured, and whether server code had uncommitted changes then."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "imserver", "cards")
    return {"commit": commit, "server_code_dirty": bool(dirty) if dirty is not None else None}


def wall_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def install_uvloop_policy() -> bool:
    """Use uvloop when installed — the server does too (``server.use_uvloop``)."""
    try:
        import uvloop
    except ImportError:
        return False
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def text_payload(phase: int, index: int, sender: int, size: int, now_ns: int) -> str:
    """A message text of exactly ``size`` ASCII bytes carrying the send time.

    Layout (fixed offsets, so receivers read it without decoding JSON):
    ``BENCH_T=<19-digit ns>;P=<3-digit phase>;S=<6-digit sender>;I=<index>;xxxx…``
    """
    head = f"{MARKER.decode()}{now_ns:019d};P={phase:03d};S={sender:06d};I={index};"
    if len(head) > size:
        raise ValueError(f"message size {size} is too small for the header ({len(head)})")
    return head + "x" * (size - len(head))


#: Where the send time starts in a frame: ``MARKER`` then 19 digits.
MARKER = b"BENCH_T="
T_OFF = len(MARKER)
P_OFF = T_OFF + 19 + 3  # after "<ns>;P="
S_OFF = P_OFF + 3 + 3  # after "<phase>;S="
