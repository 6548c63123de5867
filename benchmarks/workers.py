"""The orchestrator's side of the load-generator processes (see ``loadgen``)."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from benchmarks import loadgen
from benchmarks.common import Pinning


class WorkerError(RuntimeError):
    pass


class Worker:
    """One load-generator process and its command pipe."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        parent, child = ctx.Pipe()
        self._conn: Connection = parent
        # daemon: if the orchestrator dies, multiprocessing terminates it too;
        # the worker also stops on pipe EOF and after max_lifetime_s.
        self.proc: BaseProcess = ctx.Process(
            target=loadgen.worker_main, args=(child, spec), name=name, daemon=True
        )
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, msg: tuple[Any, ...]) -> None:
        self._conn.send(msg)

    def poll(self, timeout: float) -> bool:
        if not self.proc.is_alive() and not self._conn.poll(0):
            raise WorkerError(f"load generator {self.name} died (exit {self.proc.exitcode})")
        return self._conn.poll(timeout)

    def receive(self) -> Any:
        status, value = self._conn.recv()
        if status != "ok":
            raise WorkerError(f"load generator {self.name}: {value}")
        return value

    def call(self, msg: tuple[Any, ...], timeout: float = 60.0) -> Any:
        self.send(msg)
        deadline = time.monotonic() + timeout
        while not self.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise WorkerError(f"load generator {self.name}: no answer to {msg[0]!r}")
        return self.receive()

    def stop(self) -> None:
        """Ask politely, then terminate; never leaves a process behind."""
        try:
            if self.proc.is_alive():
                self.call(("stop",), timeout=5)
        except (WorkerError, OSError, EOFError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self._conn.close()


def start_worker(
    name: str,
    kind: str,
    *,
    port: int,
    users: list[tuple[str, str]],
    pinning: Pinning,
    max_lifetime_s: float,
    subprotocol: str,
    connect_concurrency: int = 50,
    extra: dict[str, Any] | None = None,
) -> Worker:
    """Start a load generator; ``extra`` adds kind-specific keys to its spec."""
    spec = {
        "kind": kind,
        "port": port,
        "users": users,
        "cpus": sorted(pinning.load),
        "max_lifetime_s": max_lifetime_s,
        "subprotocol": subprotocol,
        "connect_concurrency": connect_concurrency,
        "timeout_s": 30.0,
        **(extra or {}),
    }
    return Worker(name, spec)


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Split into ``parts`` contiguous, nearly equal chunks (none empty)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def wait_connected(workers: list[Worker], progress_cb: Any, timeout: float) -> None:
    """Start every worker's connections and wait until all are up (or fail)."""
    for w in workers:
        w.call(("connect",))
    deadline = time.monotonic() + timeout
    while True:
        statuses = [w.call(("status",)) for w in workers]
        up = sum(s["connected"] for s in statuses)
        total = sum(s["total"] for s in statuses)
        errors = sum(s["error_count"] for s in statuses)
        progress_cb(up, total)
        if all(s["done"] for s in statuses):
            if errors:
                first = next(e for s in statuses for e in s["errors"])
                raise WorkerError(f"{errors} of {total} connections failed, e.g. {first}")
            return
        if time.monotonic() > deadline:
            raise WorkerError(f"only {up} of {total} connections up after {timeout}s")
        time.sleep(0.1)
