"""Load-generator processes: they hold the client connections and time messages.

Why separate processes: the server must be the only thing measured on its
core. Each worker is a ``multiprocessing`` *spawn* child (a fresh
interpreter, no state inherited from the orchestrator), pinned to the load
CPU(s), running its own event loop (uvloop when installed) and the raw client
of :mod:`benchmarks.wsclient`. The orchestrator drives workers with small
commands over a pipe; workers answer with counts and latency samples (µs, in
compact ``array`` bytes).

Every worker stops by itself: on ``stop``, when the pipe closes (the
orchestrator died) or when ``max_lifetime_s`` passes, whichever comes first.

Worker kinds:

* ``members``   — many listening connections; record send→delivery latency of
  every marked message, per phase (fan-out receivers).
* ``publisher`` — one connection; creates the group and sends marked messages
  at a paced rate; records send→ack latency and its own echo deliveries.
* ``pairs``     — 1:1 conversations; both ends live in this worker; sends at a
  paced rate alternating direction; records send→ack and send→delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

import orjson

from benchmarks.common import MARKER, P_OFF, S_OFF, T_OFF, install_uvloop_policy, pin_pid
from benchmarks.common import text_payload as make_text
from benchmarks.wsclient import RawWebSocket

HOST = "127.0.0.1"


class PhaseStats:
    """What one worker saw of one measured phase."""

    __slots__ = ("count", "echo", "last_ns", "lat_us")

    def __init__(self) -> None:
        self.count = 0
        self.echo = 0
        self.last_ns = 0
        self.lat_us = array("q")


class RequestFailed(Exception):
    pass


class Client:
    """One connection: request/response for setup, a fast path for marked frames."""

    __slots__ = ("_next_id", "agent", "closed_code", "index", "pending", "user", "ws")

    def __init__(self, agent: Agent, index: int, user: str) -> None:
        self.agent = agent
        self.index = index
        self.user = user
        self.ws: RawWebSocket | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.closed_code: int | None = None
        self._next_id = 0

    async def open(self, port: int, token: str, subprotocol: str, wait_s: float) -> None:
        self.ws = await RawWebSocket.connect(
            HOST, port, self.on_message, subprotocol=subprotocol, wait_s=wait_s
        )
        self.ws.closed.add_done_callback(self._on_closed)
        await self.request({"type": "auth", "token": token}, wait_s)

    def _on_closed(self, fut: asyncio.Future[int]) -> None:
        self.closed_code = fut.result()
        self.agent.on_closed(self)

    def send(self, frame: dict[str, Any]) -> int:
        """Send a request without waiting; returns its id."""
        self._next_id += 1
        frame["id"] = self._next_id
        assert self.ws is not None
        self.ws.send_text(orjson.dumps(frame))
        return self._next_id

    async def request(self, frame: dict[str, Any], wait_s: float) -> dict[str, Any]:
        rid = self.send(frame)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            answer = await asyncio.wait_for(fut, wait_s)
        finally:
            self.pending.pop(rid, None)
        if answer.get("type") != "result":
            raise RequestFailed(f"{frame['type']}: {answer.get('code')}: {answer.get('message')}")
        data: dict[str, Any] = answer.get("data") or {}
        return data

    def on_message(self, payload: bytes, now_ns: int) -> None:
        i = payload.find(MARKER)
        if i >= 0:
            self.agent.on_marked(self, payload, i, now_ns)
            return
        frame = orjson.loads(payload)
        rid = frame.get("id")
        fut = self.pending.get(rid) if isinstance(rid, int) else None
        if fut is not None and not fut.done():
            fut.set_result(frame)
        else:
            self.agent.on_frame(self, frame, now_ns)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


class Agent:
    """Base: a set of connections, their connect progress, and per-phase stats."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.port: int = spec["port"]
        self.subprotocol: str = spec["subprotocol"]
        self.timeout: float = spec.get("timeout_s", 30.0)
        users: list[tuple[str, str]] = spec.get("users", [])
        self.tokens = [t for _, t in users]
        self.clients = [Client(self, i, u) for i, (u, _) in enumerate(users)]
        self.phases: dict[int, PhaseStats] = {}
        self.connected = 0
        self.connect_errors: list[str] = []
        self.closes: dict[str, int] = {}
        self.connecting: asyncio.Task[None] | None = None
        self.stopping = False
        #: Set when everything a phase sent has been answered (and delivered).
        self.drained = asyncio.Event()

    def stats(self, phase: int) -> PhaseStats:
        st = self.phases.get(phase)
        if st is None:
            st = self.phases[phase] = PhaseStats()
        return st

    # -- connection management -------------------------------------------------
    async def connect_all(self, concurrency: int) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(client: Client, token: str) -> None:
            async with sem:
                try:
                    await client.open(self.port, token, self.subprotocol, self.timeout)
                except Exception as e:
                    self.connect_errors.append(f"{client.user}: {type(e).__name__}: {e}")
                else:
                    self.connected += 1

        await asyncio.gather(*(one(c, t) for c, t in zip(self.clients, self.tokens, strict=True)))

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "total": len(self.clients),
            "done": self.connecting is not None and self.connecting.done(),
            "errors": self.connect_errors[:5],
            "error_count": len(self.connect_errors),
            "closes": dict(self.closes),
        }

    def on_closed(self, client: Client) -> None:
        if not self.stopping:
            key = str(client.closed_code)
            self.closes[key] = self.closes.get(key, 0) + 1

    async def close(self) -> None:
        self.stopping = True
        for c in self.clients:
            c.close()
        await asyncio.sleep(0.05)

    # -- hooks -----------------------------------------------------------------
    def on_marked(self, client: Client, payload: bytes, i: int, now_ns: int) -> None:
        """A frame carrying a send timestamp (a message event)."""

    def on_frame(self, client: Client, frame: dict[str, Any], now_ns: int) -> None:
        """Any other frame (results of pipelined sends, errors, other events)."""

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        cmd = msg[0]
        if cmd == "connect":
            self.connecting = asyncio.get_running_loop().create_task(
                self.connect_all(self.spec.get("connect_concurrency", 50))
            )
            return None
        if cmd == "status":
            return self.status()
        raise ValueError(f"unknown command {cmd!r}")


class Members(Agent):
    """Fan-out receivers: latency of every marked message, per phase."""

    def on_marked(self, client: Client, payload: bytes, i: int, now_ns: int) -> None:
        sent = int(payload[i + T_OFF : i + T_OFF + 19])
        st = self.stats(int(payload[i + P_OFF : i + P_OFF + 3]))
        st.count += 1
        st.lat_us.append((now_ns - sent) // 1000)
        if now_ns > st.last_ns:
            st.last_ns = now_ns

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        cmd = msg[0]
        if cmd == "phase_stats":
            st = self.stats(msg[1])
            return {"count": st.count, "last_ns": st.last_ns, "closes": dict(self.closes)}
        if cmd == "collect":
            st = self.phases.pop(msg[1], PhaseStats())
            return {"count": st.count, "last_ns": st.last_ns, "lat_us": st.lat_us.tobytes()}
        return await super().handle(msg)


class Publisher(Agent):
    """One sender at a paced rate; its acks and its own echoes are recorded."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.conv: str | None = None
        self.sent_at: dict[int, int] = {}
        self.acks = array("q")
        self.errors: dict[str, int] = {}
        self.sending = False

    @property
    def client(self) -> Client:
        return self.clients[0]

    def on_marked(self, client: Client, payload: bytes, i: int, now_ns: int) -> None:
        st = self.stats(int(payload[i + P_OFF : i + P_OFF + 3]))
        st.echo += 1
        if now_ns > st.last_ns:
            st.last_ns = now_ns

    def on_frame(self, client: Client, frame: dict[str, Any], now_ns: int) -> None:
        sent = self.sent_at.pop(frame.get("id"), None)  # type: ignore[arg-type]
        if sent is None:
            return
        if frame.get("type") == "result":
            self.acks.append((now_ns - sent) // 1000)
        else:
            code = str(frame.get("code"))
            self.errors[code] = self.errors.get(code, 0) + 1
        if not self.sent_at and not self.sending:
            self.drained.set()

    async def create_group(self, members: list[str], chunk: int) -> str:
        first = await self.client.request(
            {"type": "group.create", "name": "bench fan-out", "members": members[:chunk]},
            self.timeout,
        )
        conv: str = first["conv"]
        for i in range(chunk, len(members), chunk):
            await self.client.request(
                {"type": "group.add", "conv": conv, "members": members[i : i + chunk]},
                self.timeout,
            )
        self.conv = conv
        return conv

    async def phase(
        self, phase: int, rate: float, duration: float, size: int, drain_s: float
    ) -> dict[str, Any]:
        client = self.client
        count = max(1, round(rate * duration))
        self.acks = array("q")
        self.errors = {}
        self.sent_at.clear()
        self.drained.clear()
        self.sending = True
        start = time.monotonic() + 0.02
        first_ns = 0
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 32 == 0:
                await asyncio.sleep(0)  # behind schedule: still read acks now and then
            now = time.time_ns()
            if i == 0:
                first_ns = now
            rid = client.send(
                {
                    "type": "send",
                    "conv": self.conv,
                    "client_msg_id": f"b{phase}-{i}",
                    "kind": "text",
                    "body": {"text": make_text(phase, i, client.index, size, now)},
                }
            )
            self.sent_at[rid] = now
        last_send_ns = time.time_ns()
        send_span = time.monotonic() - start
        self.sending = False
        if not self.sent_at:
            self.drained.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), drain_s)
        st = self.stats(phase)
        return {
            "sent": count,
            "first_ns": first_ns,
            "last_send_ns": last_send_ns,
            "send_span_s": send_span,
            "acks": len(self.acks),
            "ack_lat_us": self.acks.tobytes(),
            "unacked": len(self.sent_at),
            "errors": dict(self.errors),
            "echo": st.echo,
            "echo_last_ns": st.last_ns,
            "closes": dict(self.closes),
        }

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        cmd = msg[0]
        if cmd == "connect":
            await self.connect_all(1)
            if self.connect_errors:
                raise RuntimeError(self.connect_errors[0])
            return None
        if cmd == "create_group":
            return await self.create_group(msg[1], msg[2])
        if cmd == "use_conv":
            self.conv = msg[1]
            return None
        if cmd == "phase":
            return await self.phase(*msg[1:])
        return await super().handle(msg)


class Pairs(Agent):
    """1:1 chat: users (2k, 2k+1) talk to each other; both ends are in this worker."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.sent_at: dict[tuple[int, int], int] = {}  # (client index, request id) -> ns
        self.acks = array("q")
        self.errors: dict[str, int] = {}
        self.phase_no = -1
        self.expect = -1  # deliveries the current phase waits for; -1 while sending

    def _check_drained(self) -> None:
        if self.expect >= 0 and not self.sent_at and self.stats(self.phase_no).count >= self.expect:
            self.drained.set()

    def on_marked(self, client: Client, payload: bytes, i: int, now_ns: int) -> None:
        st = self.stats(int(payload[i + P_OFF : i + P_OFF + 3]))
        if int(payload[i + S_OFF : i + S_OFF + 6]) == client.index:
            st.echo += 1  # the sending device's own copy
            return
        sent = int(payload[i + T_OFF : i + T_OFF + 19])
        st.count += 1
        st.lat_us.append((now_ns - sent) // 1000)
        if now_ns > st.last_ns:
            st.last_ns = now_ns
        self._check_drained()

    def on_frame(self, client: Client, frame: dict[str, Any], now_ns: int) -> None:
        sent = self.sent_at.pop((client.index, frame.get("id")), None)  # type: ignore[arg-type]
        if sent is None:
            return
        if frame.get("type") == "result":
            self.acks.append((now_ns - sent) // 1000)
        else:
            code = str(frame.get("code"))
            self.errors[code] = self.errors.get(code, 0) + 1
        self._check_drained()

    async def phase(
        self, phase: int, rate: float, duration: float, size: int, drain_s: float
    ) -> dict[str, Any]:
        pairs = [(self.clients[k], self.clients[k + 1]) for k in range(0, len(self.clients), 2)]
        count = max(len(pairs), round(rate * duration))
        self.acks = array("q")
        self.errors = {}
        self.sent_at.clear()
        self.drained.clear()
        self.phase_no, self.expect = phase, -1
        st = self.stats(phase)
        start = time.monotonic() + 0.02
        first_ns = 0
        for k in range(count):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif k % 32 == 0:
                await asyncio.sleep(0)
            a, b = pairs[k % len(pairs)]
            sender, receiver = (a, b) if (k // len(pairs)) % 2 == 0 else (b, a)
            now = time.time_ns()
            if k == 0:
                first_ns = now
            rid = sender.send(
                {
                    "type": "send",
                    "to": receiver.user,
                    "client_msg_id": f"c{phase}-{k}",
                    "kind": "text",
                    "body": {"text": make_text(phase, k, sender.index, size, now)},
                }
            )
            self.sent_at[(sender.index, rid)] = now
        send_span = time.monotonic() - start
        self.expect = count
        self._check_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), drain_s)
        self.expect = -1
        self.phases.pop(phase, None)
        return {
            "sent": count,
            "first_ns": first_ns,
            "send_span_s": send_span,
            "acks": len(self.acks),
            "ack_lat_us": self.acks.tobytes(),
            "unacked": len(self.sent_at),
            "errors": dict(self.errors),
            "delivered": st.count,
            "delivery_lat_us": st.lat_us.tobytes(),
            "echo": st.echo,
            "last_ns": st.last_ns,
            "closes": dict(self.closes),
        }

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        if msg[0] == "phase":
            return await self.phase(*msg[1:])
        return await super().handle(msg)


AGENTS: dict[str, type[Agent]] = {"members": Members, "publisher": Publisher, "pairs": Pairs}


def worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of a load-generator process (``multiprocessing`` spawn target)."""
    if spec.get("cpus"):
        pin_pid(0, frozenset(spec["cpus"]))
    install_uvloop_policy()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(conn, spec))


async def _serve(conn: Connection, spec: dict[str, Any]) -> None:
    agent = AGENTS[spec["kind"]](spec)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def read_commands() -> None:
        # A blocking reader thread rather than loop.add_reader: uvloop makes a
        # watched fd non-blocking, and a large reply written to a non-blocking
        # pipe would fail half-way.
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the orchestrator is gone: stop
                msg = ("stop",)
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, msg)
            except RuntimeError:  # the loop has already finished
                return
            if msg[0] == "stop":
                return

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    deadline = time.monotonic() + float(spec.get("max_lifetime_s", 600))
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(inbox.get(), remaining)
            except TimeoutError:
                break
            if msg[0] == "stop":
                with contextlib.suppress(OSError):
                    conn.send(("ok", None))
                break
            try:
                reply: tuple[str, Any] = ("ok", await agent.handle(msg))
            except Exception as e:
                reply = ("error", f"{type(e).__name__}: {e}")
            try:
                conn.send(reply)
            except OSError:
                break
    finally:
        await agent.close()
