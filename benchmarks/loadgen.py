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
* ``counted_members`` — ``members`` that also count each message's arrivals
  per connection: every member got every message exactly once? (cluster)
* ``publisher`` — one connection; creates the group and sends marked messages
  at a paced rate; records send→ack latency and its own echo deliveries.
* ``pairs``     — 1:1 conversations; both ends live in this worker; sends at a
  paced rate alternating direction; records send→ack and send→delivered.
* ``idle``      — authenticated connections that do nothing (connect); every
  agent records how long each connect + auth took.
* ``resync``    — group members that track every ``(conv, seq)`` they hold;
  on ``drop`` they reset all their sockets at once and resume: reconnect,
  ``auth``, ``sync`` with their per-conversation last seq (storm).
* ``groups``    — one connection that creates the groups and keeps messages
  flowing into them at a paced rate until told to stop (storm).
* ``cards``     — card approvers plus, in the same process, the business
  system: an aiohttp server answering the callbacks through
  ``imserver_sdk.callback_handler``, and ``imserver_sdk.BusinessClient``
  pushing the cards (cards).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import threading
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

import orjson

from benchmarks.common import (
    MARKER,
    P_OFF,
    S_OFF,
    T_OFF,
    install_uvloop_policy,
    pin_pid,
    raise_nofile_limit,
)
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

    async def open(
        self,
        port: int,
        token: str,
        subprotocol: str,
        wait_s: float,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        self.ws = await RawWebSocket.connect(
            HOST,
            port,
            self.on_message,
            subprotocol=subprotocol,
            wait_s=wait_s,
            local_addr=local_addr,
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

    def abort(self) -> None:
        """Reset the socket (no close frame); its close is expected, so not reported."""
        if self.ws is not None:
            self.ws.closed.remove_done_callback(self._on_closed)
            self.ws.abort()


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
        self.connect_started_ns = 0
        self.connect_finished_ns = 0
        self.connect_us = array("q")  # connect + WebSocket upgrade + auth, per connection
        #: Source addresses (127.0.0.x) to spread connections over; none: the kernel picks.
        self.source_addrs: list[str] = list(spec.get("source_addrs") or [])
        self.stopping = False
        #: Set when everything a phase sent has been answered (and delivered).
        self.drained = asyncio.Event()

    def stats(self, phase: int) -> PhaseStats:
        st = self.phases.get(phase)
        if st is None:
            st = self.phases[phase] = PhaseStats()
        return st

    # -- connection management -------------------------------------------------
    def local_addr(self, index: int) -> tuple[str, int] | None:
        if not self.source_addrs:
            return None
        return (self.source_addrs[index % len(self.source_addrs)], 0)

    async def open_client(self, client: Client, token: str) -> None:
        """Connect and authenticate one client (subclasses add what follows, e.g. sync)."""
        await client.open(
            self.port, token, self.subprotocol, self.timeout, self.local_addr(client.index)
        )

    async def connect_all(self, concurrency: int) -> None:
        sem = asyncio.Semaphore(concurrency)
        self.connect_started_ns = time.time_ns()

        async def one(client: Client, token: str) -> None:
            async with sem:
                t0 = time.perf_counter_ns()
                try:
                    await self.open_client(client, token)
                except Exception as e:
                    self.connect_errors.append(f"{client.user}: {type(e).__name__}: {e}")
                else:
                    self.connected += 1
                    self.connect_us.append((time.perf_counter_ns() - t0) // 1000)

        await asyncio.gather(*(one(c, t) for c, t in zip(self.clients, self.tokens, strict=True)))
        self.connect_finished_ns = time.time_ns()

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

    async def connect_now(self) -> None:
        """Connect every client before answering (publishers: one or a few sockets)."""
        await self.connect_all(1)
        if self.connect_errors:
            raise RuntimeError(self.connect_errors[0])

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        cmd = msg[0]
        if cmd == "connect":
            self.connecting = asyncio.get_running_loop().create_task(
                self.connect_all(self.spec.get("connect_concurrency", 50))
            )
            return None
        if cmd == "status":
            return self.status()
        if cmd == "connect_stats":
            return {
                "started_ns": self.connect_started_ns,
                "finished_ns": self.connect_finished_ns,
                "connected": self.connected,
                "lat_us": self.connect_us.tobytes(),
            }
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


class CountedMembers(Members):
    """Members that also count, per connection, how often each message arrived (cluster).

    A total per worker cannot tell a loss from a duplicate elsewhere (they
    cancel out); with members spread over several nodes the question is
    whether *every* member got *every* message exactly once. Per phase and
    connection a byte per message index (the ``I=`` of the text) counts
    arrivals, saturating at 255.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.seen: dict[int, list[bytearray]] = {}

    def on_marked(self, client: Client, payload: bytes, i: int, now_ns: int) -> None:
        super().on_marked(client, payload, i, now_ns)
        phase = int(payload[i + P_OFF : i + P_OFF + 3])
        start = i + S_OFF + 9  # after "<6-digit sender>;I="
        index = int(payload[start : payload.index(b";", start)])
        per_client = self.seen.get(phase)
        if per_client is None:
            per_client = self.seen[phase] = [bytearray() for _ in self.clients]
        counts = per_client[client.index]
        if index >= len(counts):
            counts.extend(bytes(index + 1 - len(counts)))
        if counts[index] < 255:
            counts[index] += 1

    def arrivals(self, phase: int, sent: int) -> dict[str, list[int]]:
        """Per user: [distinct messages of 0..sent-1 received, duplicates, indices ≥ sent]."""
        per_client = self.seen.pop(phase, None) or [bytearray() for _ in self.clients]
        out: dict[str, list[int]] = {}
        for client, counts in zip(self.clients, per_client, strict=True):
            head = counts[:sent]
            distinct = len(head) - head.count(0)
            duplicates = sum(c - 1 for c in counts if c > 1)
            beyond = len(counts[sent:]) - counts[sent:].count(0)
            out[client.user] = [distinct, duplicates, beyond]
        return out

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        if msg[0] == "arrivals":
            return self.arrivals(msg[1], msg[2])
        return await super().handle(msg)


class Publisher(Agent):
    """Senders at a paced total rate; their acks and their echoes are recorded.

    With several connections (``--publishers``) message *i* goes out on
    connection *i* mod K: K group members talking at once, so the server sees
    concurrent sends from different sockets, as in a busy group. Every
    publisher connection is a group member, so each message is echoed to all K.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.conv: str | None = None
        self.sent_at: dict[tuple[int, int], int] = {}
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
        sent = self.sent_at.pop((client.index, frame.get("id")), None)  # type: ignore[arg-type]
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
        clients = self.clients
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
            client = clients[i % len(clients)]
            rid = client.send(
                {
                    "type": "send",
                    "conv": self.conv,
                    "client_msg_id": f"b{phase}-{i}",
                    "kind": "text",
                    "body": {"text": make_text(phase, i, client.index, size, now)},
                }
            )
            self.sent_at[client.index, rid] = now
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
            return await self.connect_now()
        if cmd == "create_group":
            return await self.create_group(msg[1], msg[2])
        if cmd == "use_conv":
            self.conv = msg[1]
            return None
        if cmd == "echo_stats":
            st = self.stats(msg[1])
            return {"echo": st.echo, "last_ns": st.last_ns}
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


class Idle(Agent):
    """connect: authenticated connections that then do nothing (they answer pings)."""


class SeqSet:
    """The seqs one client holds of one conversation: a bitmap, and the highest
    seq up to which it holds everything (what it sends as ``since`` on resume)."""

    __slots__ = ("bits", "contig")

    def __init__(self) -> None:
        self.bits = bytearray(64)
        self.contig = 0

    def add(self, seq: int) -> bool:
        """Record ``seq``; False if it was already held (a duplicate)."""
        if seq <= self.contig:
            return False
        bits = self.bits
        if seq >= len(bits):
            bits.extend(bytes(max(seq + 1 - len(bits), len(bits))))
        if bits[seq]:
            return False
        bits[seq] = 1
        if seq == self.contig + 1:
            c, n = seq, len(bits)
            while c + 1 < n and bits[c + 1]:
                c += 1
            self.contig = c
        return True

    def missing(self, last: int) -> int:
        """How many of 1..last are not held."""
        if self.contig >= last:
            return 0
        return last - self.contig - self.bits[self.contig + 1 : last + 1].count(1)

    def beyond(self, last: int) -> int:
        """Held seqs above ``last`` (must be 0 when ``last`` is the server's last seq)."""
        return self.bits[last + 1 :].count(1)


class Resync(Agent):
    """storm: group members that know exactly which messages they hold.

    Every ``message`` event and every message in a ``sync`` answer is
    recorded per ``(conv, seq)``. ``drop`` resets every socket of this worker
    at once (TCP RST, as a network failure), then each client resumes as the
    protocol says: reconnect, ``auth``, ``sync`` with ``since`` = its
    per-conversation last gapless seq, repeated while ``more``. ``check``
    compares what each client holds with the server's last seqs.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.held: list[dict[str, SeqSet]] = [{} for _ in self.clients]
        self.events = 0
        self.duplicates = 0
        self.sync_requests = 0
        self.sync_messages = 0
        self.resuming: asyncio.Task[None] | None = None
        self.drop_ns = 0
        self.resumed = 0
        self.resume_done_ns = array("q")
        self.resume_errors: list[str] = []
        self.retries = 0
        self.retry_reasons: dict[str, int] = {}

    def _hold(self, index: int, conv: str, seq: int) -> bool:
        held = self.held[index]
        s = held.get(conv)
        if s is None:
            s = held[conv] = SeqSet()
        return s.add(seq)

    def on_frame(self, client: Client, frame: dict[str, Any], now_ns: int) -> None:
        if frame.get("type") == "event" and frame.get("event") == "message":
            data = frame["data"]
            self.events += 1
            if not self._hold(client.index, data["conv"], data["seq"]):
                self.duplicates += 1

    async def open_client(self, client: Client, token: str) -> None:
        await super().open_client(client, token)
        await self.sync(client)

    async def sync(self, client: Client) -> None:
        held = self.held[client.index]
        for _ in range(10_000):  # each round moves some conversation forward
            since = {conv: s.contig for conv, s in held.items()}
            self.sync_requests += 1
            data = await client.request({"type": "sync", "since": since}, self.timeout)
            convs = data.get("conversations") or []
            for c in convs:
                held.setdefault(c["conv"], SeqSet())
                for m in c.get("messages") or []:
                    self.sync_messages += 1
                    if not self._hold(client.index, m["conv"], m["seq"]):
                        self.duplicates += 1
            if not data.get("more") and not any(c.get("more") for c in convs):
                return
        raise RuntimeError("sync kept answering more: true")

    def drop(self, concurrency: int, max_attempts: int) -> int:
        """Reset every socket now, then resume all clients in the background."""
        self.drop_ns = time.time_ns()
        for c in self.clients:
            c.abort()
        self.resumed = 0
        self.resume_errors = []
        self.retries = 0
        self.retry_reasons = {}
        self.resume_done_ns = array("q", [0] * len(self.clients))
        self.resuming = asyncio.get_running_loop().create_task(
            self._resume_all(concurrency, max_attempts)
        )
        return self.drop_ns

    @staticmethod
    def backoff(attempt: int) -> float:
        """The SDK's reconnect delay (``imserver_sdk.Client._backoff`` with its defaults):
        "equal jitter" over 0.2 s doubling up to 10 s, also before the first attempt."""
        base = min(10.0, 0.2 * 2.0**attempt)
        return base / 2 + random.uniform(0, base / 2)

    async def _resume_all(self, concurrency: int, max_attempts: int) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(client: Client, token: str) -> None:
            for attempt in range(max_attempts):
                await asyncio.sleep(self.backoff(attempt))
                try:
                    async with sem:  # the backoff is spent outside the limit
                        await self.open_client(client, token)
                except Exception as e:
                    self.retries += 1
                    reason = type(e).__name__
                    self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + 1
                    client.abort()
                    if attempt == max_attempts - 1:
                        self.resume_errors.append(f"{client.user}: {reason}: {e}")
                    continue
                self.resume_done_ns[client.index] = time.time_ns()
                self.resumed += 1
                return

        await asyncio.gather(*(one(c, t) for c, t in zip(self.clients, self.tokens, strict=True)))

    def resume_status(self) -> dict[str, Any]:
        return {
            "resumed": self.resumed,
            "total": len(self.clients),
            "done": self.resuming is not None and self.resuming.done(),
            "errors": self.resume_errors[:5],
            "error_count": len(self.resume_errors),
            "retries": self.retries,
            "retry_reasons": dict(self.retry_reasons),
            "closes": dict(self.closes),
        }

    def check(self, last: dict[str, int], membership: dict[str, list[str]]) -> dict[str, Any]:
        """Compare what every client holds with the server's last seq of its conversations."""
        missing = beyond = incomplete = expected = 0
        examples: list[str] = []
        for client, held in zip(self.clients, self.held, strict=True):
            short = 0
            for conv in membership.get(client.user, []):
                top = last.get(conv, 0)
                expected += top
                s = held.get(conv)
                gap = top if s is None else s.missing(top)
                if s is not None:
                    beyond += s.beyond(top)
                short += gap
                if gap and len(examples) < 5:
                    examples.append(f"{client.user} lacks {gap} of 1..{top} in {conv}")
            missing += short
            incomplete += 1 if short else 0
        return {
            "clients": len(self.clients),
            "incomplete": incomplete,
            "missing": missing,
            "expected": expected,
            "beyond": beyond,
            "examples": examples,
            "events": self.events,
            "duplicates": self.duplicates,
            "sync_requests": self.sync_requests,
            "sync_messages": self.sync_messages,
        }

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        cmd = msg[0]
        if cmd == "drop":
            return self.drop(msg[1], msg[2])
        if cmd == "resume_status":
            return self.resume_status()
        if cmd == "resume_stats":
            return {"drop_ns": self.drop_ns, "done_ns": self.resume_done_ns.tobytes()}
        if cmd == "check":
            return self.check(msg[1], msg[2])
        return await super().handle(msg)


class GroupPublisher(Agent):
    """storm: owns the groups and sends into them round-robin at a paced rate."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.convs: list[str] = []
        self.sender: asyncio.Task[None] | None = None
        self.stop_sending = False
        self.sent = 0
        self.first_ns = 0
        self.sent_at: dict[int, int] = {}
        self.ack_sent_ns = array("q")  # send time of each acked message
        self.ack_us = array("q")
        self.errors: dict[str, int] = {}
        self.unmatched: list[Any] = []  # answers to no outstanding send (must stay empty)
        self.stopped_ns = 0

    @property
    def client(self) -> Client:
        return self.clients[0]

    def on_frame(self, client: Client, frame: dict[str, Any], now_ns: int) -> None:
        sent = self.sent_at.pop(frame.get("id"), None)  # type: ignore[arg-type]
        if sent is None:
            if frame.get("type") in ("result", "error") and len(self.unmatched) < 10:
                self.unmatched.append(frame)
            return
        if frame.get("type") == "result":
            self.ack_sent_ns.append(sent)
            self.ack_us.append((now_ns - sent) // 1000)
        else:
            code = str(frame.get("code"))
            self.errors[code] = self.errors.get(code, 0) + 1
        if self.stop_sending and not self.sent_at:
            self.drained.set()

    async def create_groups(self, groups: list[list[str]], chunk: int = 500) -> list[str]:
        convs = []
        for k, members in enumerate(groups):
            first = await self.client.request(
                {"type": "group.create", "name": f"storm {k}", "members": members[:chunk]},
                self.timeout,
            )
            for i in range(chunk, len(members), chunk):
                await self.client.request(
                    {"type": "group.add", "conv": first["conv"], "members": members[i : i + chunk]},
                    self.timeout,
                )
            convs.append(first["conv"])
        self.convs = convs
        return convs

    async def _send_loop(self, rate: float, size: int) -> None:
        client = self.client
        start = time.monotonic()
        self.first_ns = time.time_ns()
        i = 0
        while not self.stop_sending:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 32 == 0:
                await asyncio.sleep(0)  # behind schedule: still read acks now and then
            if self.stop_sending:
                break
            conv = self.convs[i % len(self.convs)]
            head = f"storm {i} "
            now = time.time_ns()
            rid = client.send(
                {
                    "type": "send",
                    "conv": conv,
                    "client_msg_id": f"s{i}",
                    "kind": "text",
                    "body": {"text": head + "x" * max(1, size - len(head))},
                }
            )
            self.sent_at[rid] = now
            self.sent += 1
            i += 1

    async def finish(self, drain_s: float) -> dict[str, Any]:
        self.stop_sending = True
        self.stopped_ns = time.time_ns()
        if self.sender is not None:
            await self.sender
        last_ns = time.time_ns()
        # An ack that emptied sent_at before the sender's last send must not count.
        self.drained.clear()
        if not self.sent_at:
            self.drained.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), drain_s)
        return {
            "sent": self.sent,
            "first_ns": self.first_ns,
            "last_ns": last_ns,
            "acks": len(self.ack_us),
            "ack_sent_ns": self.ack_sent_ns.tobytes(),
            "ack_us": self.ack_us.tobytes(),
            "unacked": len(self.sent_at),
            # id → ms its send came before the stop (negative: after it)
            "unacked_ids": {
                rid: round((self.stopped_ns - t) / 1e6, 3)
                for rid, t in list(self.sent_at.items())[:10]
            },
            "unmatched": self.unmatched,
            "last_id": self.client._next_id,
            "errors": dict(self.errors),
            "closes": dict(self.closes),
        }

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        cmd = msg[0]
        if cmd == "connect":
            return await self.connect_now()
        if cmd == "create_groups":
            return await self.create_groups(msg[1])
        if cmd == "start_sending":
            self.stop_sending = False
            self.drained.clear()
            self.sender = asyncio.get_running_loop().create_task(self._send_loop(msg[1], msg[2]))
            return None
        if cmd == "sent":
            return {"sent": self.sent, "acks": len(self.ack_us), "errors": dict(self.errors)}
        if cmd == "finish":
            return await self.finish(msg[1])
        if cmd == "last_seqs":
            data = await self.client.request({"type": "group.list"}, self.timeout)
            return {g["conv"]: g["last_seq"] for g in data["groups"]}
        return await super().handle(msg)


#: The business system's answer to every callback: this status marks the update event.
CARD_DONE_STATUS = {"text": "已办结", "color": "green"}


class CardTrace:
    """The timeline of one card (ns, ``time.time_ns()``; 0: not seen)."""

    __slots__ = (
        "ack_ns",
        "callback_ns",
        "card_id",
        "click_ns",
        "decided",
        "decided_all_ns",
        "delivered",
        "delivered_all",
        "finished",
        "push_ns",
        "updated",
        "updated_all_ns",
        "updated_first_ns",
    )

    def __init__(self) -> None:
        self.card_id = ""
        self.push_ns = self.click_ns = self.ack_ns = self.callback_ns = 0
        self.delivered = self.decided = self.updated = 0
        self.decided_all_ns = self.updated_first_ns = self.updated_all_ns = 0
        self.delivered_all = asyncio.Event()
        self.finished = asyncio.Event()


class CardDesk(Agent):
    """cards: N approvers' connections and the business system, in one process.

    Per card: ``BusinessClient.push_card`` to all approvers (policy any-of);
    once every approver holds it, one of them (round-robin) sends
    ``card.act approve`` — the click. The server stores the decision, fans the
    decided card out, and POSTs the signed callback to the stub (an aiohttp
    server on 127.0.0.1 using ``imserver_sdk.callback_handler``), which
    answers with a ``card_update``; the server applies it and fans the new
    version out. Recorded: click → act result, → callback at the stub, →
    decided card at all approvers, → updated card at the first and at all.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.http_url = f"http://{HOST}:{spec['http_port']}"
        self.app_id = "bench"
        self.secret = secrets.token_urlsafe(32)
        self.traces: dict[str, CardTrace] = {}
        self.runner: Any = None
        self.biz: Any = None
        self.running: asyncio.Task[None] | None = None
        self.done = 0
        self.total = 0
        self.failures: list[str] = []
        self.rows: dict[str, array[int]] = {}

    # -- the business system ----------------------------------------------------
    async def setup(self) -> str:
        import aiohttp
        from aiohttp import web

        from imserver_sdk import BusinessClient, CallbackAction, callback_handler

        async def on_action(action: CallbackAction) -> dict[str, Any] | None:
            tr = self.traces.get(action.out_track_id)
            if tr is not None and not tr.callback_ns:
                tr.callback_ns = time.time_ns()
            return {"status": CARD_DONE_STATUS}

        app = web.Application()
        app.router.add_post("/callback", callback_handler(self.secret, on_action))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, HOST, 0).start()
        url = f"http://{HOST}:{self.runner.addresses[0][1]}/callback"
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{self.http_url}/admin/v1/apps",
                headers={"Authorization": f"Bearer {self.spec['admin_api_key']}"},
                json={
                    "app_id": self.app_id,
                    "secret": self.secret,
                    "callback_url": url,
                    "scope": ["*"],
                    "name": "bench OA",
                },
            ) as r,
        ):
            if r.status != 201:
                raise RuntimeError(f"registering the app: HTTP {r.status}: {await r.text()}")
        self.biz = BusinessClient(self.http_url, self.app_id, self.secret)
        return url

    async def close(self) -> None:
        await super().close()
        if self.biz is not None:
            await self.biz.close()
        if self.runner is not None:
            await self.runner.cleanup()

    # -- what the approvers see ----------------------------------------------------
    def on_frame(self, client: Client, frame: dict[str, Any], now_ns: int) -> None:
        if frame.get("type") != "event":
            return
        event, data = frame.get("event"), frame.get("data") or {}
        n = len(self.clients)
        if event == "message" and data.get("kind") == "card":
            tr = self.traces.get(data["body"]["card"]["out_track_id"])
            if tr is not None:
                tr.delivered += 1
                if tr.delivered == n:
                    tr.delivered_all.set()
        elif event == "card":
            tr = self.traces.get(data.get("out_track_id", ""))
            if tr is None:
                return
            if data.get("status") == CARD_DONE_STATUS:
                tr.updated += 1
                if tr.updated == 1:
                    tr.updated_first_ns = now_ns
                if tr.updated == n:
                    tr.updated_all_ns = now_ns
                    tr.finished.set()
            elif data.get("state") == "approved":
                tr.decided += 1
                if tr.decided == n:
                    tr.decided_all_ns = now_ns

    def card(self, track: str) -> dict[str, Any]:
        users = [c.user for c in self.clients]
        return {
            "out_track_id": track,
            "title": f"请假审批：张三 3 天 ({track})",
            "fields": [
                {"label": "申请人", "value": "张三"},
                {"label": "事由", "value": "家中有事"},
                {"label": "手机", "value": "13812341234", "sensitive": True},
            ],
            "body_md": "**起止**：11月27日—11月29日",
            "status": {"text": "待审批", "color": "orange"},
            "actions": [
                {"id": "approve", "label": "同意", "decision": "approve", "style": "primary"},
                {"id": "reject", "label": "驳回", "decision": "reject", "style": "danger"},
            ],
            "inputs": [
                {"id": "comment", "type": "text", "label": "意见", "required_for": ["reject"]}
            ],
            "policy": {"type": "any", "actors": users},
        }

    async def run_cards(self, count: int, warmup: int, gap_s: float) -> None:
        users = [c.user for c in self.clients]
        names = (
            "deliver",  # push → the card message at all approvers
            "ack",  # click → card.act result
            "callback",  # click → callback at the business system
            "decided_all",  # click → decided card (state approved) at all approvers
            "updated_first",  # click → updated card at the first approver
            "updated_all",  # click → updated card at all approvers (headline)
            "callback_to_updated_all",  # callback → updated card at all approvers
        )
        self.rows = {k: array("q") for k in names}
        self.total = warmup + count
        for k in range(self.total):
            track = f"bench-{k:05d}"
            tr = self.traces[track] = CardTrace()
            try:
                tr.push_ns = time.time_ns()
                pushed = await self.biz.push_card(self.card(track), users=users)
                tr.card_id = pushed["card_id"]
                await asyncio.wait_for(tr.delivered_all.wait(), self.timeout)
                deliver_ns = time.time_ns()
                clicker = self.clients[k % len(self.clients)]
                tr.click_ns = time.time_ns()
                await clicker.request(
                    {
                        "type": "card.act",
                        "card_id": tr.card_id,
                        "action": "approve",
                        "action_id": f"act-{k}",
                    },
                    self.timeout,
                )
                tr.ack_ns = time.time_ns()
                await asyncio.wait_for(tr.finished.wait(), self.timeout)
            except Exception as e:
                self.failures.append(f"{track}: {type(e).__name__}: {e}")
            else:
                if k >= warmup:
                    c = tr.click_ns
                    row = (
                        deliver_ns - tr.push_ns,
                        tr.ack_ns - c,
                        tr.callback_ns - c,
                        tr.decided_all_ns - c,
                        tr.updated_first_ns - c,
                        tr.updated_all_ns - c,
                        tr.updated_all_ns - tr.callback_ns,
                    )
                    for name, value in zip(names, row, strict=True):
                        self.rows[name].append(value // 1000)
            self.done += 1
            self.traces.pop(track, None)
            if gap_s > 0:
                await asyncio.sleep(gap_s)

    async def handle(self, msg: tuple[Any, ...]) -> Any:
        cmd = msg[0]
        if cmd == "setup":
            return await self.setup()
        if cmd == "run":
            self.running = asyncio.get_running_loop().create_task(
                self.run_cards(msg[1], msg[2], msg[3])
            )
            return None
        if cmd == "progress":
            return {
                "done": self.done,
                "total": self.total,
                "finished": self.running is not None and self.running.done(),
                "failures": self.failures[:5],
                "failure_count": len(self.failures),
                "closes": dict(self.closes),
            }
        if cmd == "collect":
            if self.running is not None and self.running.done() and self.running.exception():
                raise RuntimeError(f"card run failed: {self.running.exception()!r}")
            return {k: v.tobytes() for k, v in self.rows.items()}
        return await super().handle(msg)


AGENTS: dict[str, type[Agent]] = {
    "members": Members,
    "counted_members": CountedMembers,
    "publisher": Publisher,
    "pairs": Pairs,
    "idle": Idle,
    "resync": Resync,
    "groups": GroupPublisher,
    "cards": CardDesk,
}


def worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of a load-generator process (``multiprocessing`` spawn target)."""
    if spec.get("cpus"):
        pin_pid(0, frozenset(spec["cpus"]))
    raise_nofile_limit()  # inherited already; a worker holding 5,000 sockets must not depend on it
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
