"""The Redis bus: several nodes, routed by interest, Redis as a lossy doorbell.

Redis holds nothing the store does not: a message is committed before its
``(conv, seq)`` is published, so a node that missed a publication (a gap in
seq, a reconnect, a Redis restart) reads the missing messages from the
store. What goes where (docs/cluster.md has the costs):

* ``{prefix}c:{conv}`` -- stored messages (``deliver`` payloads with ``conv``
  and ``seq``), published once; a node subscribes while a user with a local
  session is a member (``interest.py``), and orders / deduplicates / fills
  them per conversation (``gaps.py``).
* ``{prefix}u:{user}`` -- per-user events without a seq (card views, todo,
  read, ding, ``skip_device``), one publication per recipient; subscribed
  while the user has a local session. After a reconnect every local session
  gets a ``resync`` event, since these cannot be filled by seq.
* ``{prefix}ctl`` -- membership changes, revocations, directory changes:
  every node hears them (small and rare).
* ``{prefix}presence`` -- online/offline transitions, heard by every node
  (one event per login or logout in the whole cluster).

Handlers are called exactly as :class:`~imserver.bus.local.LocalBus` calls
them, so the hub and services do not know which bus they run on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict, deque
from collections.abc import Awaitable, Sequence
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from imserver.bus.base import (
    TOPIC_CONV_CHANGED,
    TOPIC_DELIVER,
    TOPIC_PRESENCE,
    Handler,
)
from imserver.bus.gaps import ConvSeq, Heard, fill
from imserver.bus.interest import Change, Interest, Overheard
from imserver.bus.redis_links import Client, Links, describe, make_client, start_error
from imserver.bus.redis_presence import RedisPresence
from imserver.bus.redis_settings import BusStore, RedisBusSettings
from imserver.bus.refill import Refill, plain_refill
from imserver.errors import BusUnavailable
from imserver.protocol.frames import event_frame
from imserver.store.records import Message

log = logging.getLogger(__name__)

#: ``resync`` reasons (docs/protocol.md): the client runs ``sync`` on either.
RESYNC_BUS_RECONNECTED = "bus_reconnected"
RESYNC_BACKLOG = "backlog"


class RedisBus:
    def __init__(
        self, settings: RedisBusSettings, store: BusStore, refill: Refill = plain_refill
    ) -> None:
        #: Public so tests (and operators' tooling) can read what is in force.
        self.settings = settings
        self._store = store
        #: Set by the composition root once the services exist (card views).
        self.refill = refill
        self._prefix = settings.prefix
        self._handlers: defaultdict[str, list[Handler]] = defaultdict(list)
        self._interest = Interest()
        self._seqs: dict[str, ConvSeq] = {}
        self._channels: set[str] = set()
        self._wanted_users: set[str] = set()
        self._overheard = Overheard()
        self._lock = asyncio.Lock()
        self._outbox: deque[tuple[str, bytes]] = deque(maxlen=settings.outbox_max)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The command connection (publishing, presence, shared rate limits,
        #: nonces). redis-py connects lazily, so it exists before ``start``.
        self.client: Client = make_client(settings.url, settings.cluster_nodes, settings.auth)
        self._links: Links | None = None
        #: Cluster-wide "who is online" for ``presence.query``.
        self.presence = RedisPresence(self.client, settings.prefix, settings.node_name)
        self._supervisor: asyncio.Task[None] | None = None
        self.connected = False
        #: Times the subscriber links were re-established (``/healthz``, tests).
        self.reconnects = 0

    # -- lifecycle -----------------------------------------------------------
    @property
    def describe(self) -> str:
        return describe(self.settings.url, self.settings.cluster_nodes)

    async def start(self) -> None:
        """Connect and subscribe to the broadcast channels; fail with one clear line."""
        client = self.client
        self._channels.update((self._ctl, self._presence))
        self._links = self._new_links()
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()  # reads the slot map: fails here if unreachable
            await client.ping()
            await self._links.subscribe(sorted(self._channels))
        # A cluster's start-up errors are RedisClusterException, not RedisError.
        except (RedisError, RedisClusterException, OSError) as e:
            await self._links.close()
            await _close_quietly(client)
            raise BusUnavailable(start_error(self.describe, e)) from None
        self.connected = True
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-bus")
        self._spawn(self.presence.run(self._interest.users))

    def _new_links(self) -> Links:
        s = self.settings
        return Links(self.client, self._on_message, s.node_name, s.url, s.auth)

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._links is not None:
            await self._links.close()
        await _close_quietly(self.client)
        self.connected = False
        self._handlers.clear()

    def health(self) -> dict[str, Any]:
        """For ``/healthz``: reachable or not, and how much this node listens to."""
        return {
            "backend": "redis",
            "redis": self.describe,
            "connected": self.connected,
            "channels": len(self._channels),
            "conversations": len(self._seqs),
            "reconnects": self.reconnects,
            "outbox": len(self._outbox),
        }

    # -- channels --------------------------------------------------------------
    @property
    def _ctl(self) -> str:
        return f"{self._prefix}ctl"

    @property
    def _presence(self) -> str:
        return f"{self._prefix}presence"

    def _conv_channel(self, conv: str) -> str:
        return f"{self._prefix}c:{conv}"

    def _user_channel(self, user: str) -> str:
        return f"{self._prefix}u:{user}"

    # -- publishing ------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        if topic == TOPIC_DELIVER:
            await self._publish_deliver(payload)
            return
        if topic == TOPIC_PRESENCE:
            # Only this node's own sessions publish presence: it is also how
            # the bus learns that a user's first (last) local session opened (closed).
            if payload["online"]:
                await self._user_online(payload["user"])
            else:
                await self._user_offline(payload["user"])
                if await self._online_elsewhere(payload["user"]):
                    return  # offline here, not in the cluster: watchers hear nothing
            await self._send([(self._presence, orjson.dumps(payload))])
            return
        await self._send([(self._ctl, orjson.dumps({"t": topic, "p": payload}))])

    async def _online_elsewhere(self, user: str) -> bool:
        try:
            return (await self.presence.online([user]))[user]
        except (RedisError, OSError):
            return False  # say offline; the next online event corrects it

    async def _publish_deliver(self, payload: dict[str, Any]) -> None:
        conv = payload.get("conv")
        if conv is not None and "seq" in payload:
            messages: list[tuple[str, bytes]] = []
            if payload["seq"] == 1:  # a new conversation: nobody is subscribed yet
                announce = {"t": TOPIC_CONV_CHANGED, "p": {"conv": conv, "after": 0}}
                messages.append((self._ctl, orjson.dumps(announce)))
            messages.append((self._conv_channel(conv), orjson.dumps(payload)))
            await self._send(messages)
            return
        recipients = payload.get("recipients") or ()
        per_user = [
            (self._user_channel(user), orjson.dumps({**payload, "recipients": [user]}))
            for user in recipients
        ]
        await self._send(per_user)

    async def _send(self, messages: list[tuple[str, bytes]]) -> None:
        """``SPUBLISH`` each, pipelined; kept for after the reconnect if Redis is away.

        A publication is never an error for the caller: the data is in the
        store already, and the receivers fill gaps from it.
        """
        if not messages:
            return
        if not self.connected:
            self._outbox.extend(messages)
            return
        try:
            await self._spublish(messages)
        except (RedisError, OSError) as e:
            log.warning("redis bus: publish failed, kept for the reconnect: %s", e)
            self._outbox.extend(messages)
            if self._links is not None:
                self._links.lost.set()

    async def _spublish(self, messages: list[tuple[str, bytes]]) -> None:
        client = self.client
        if len(messages) == 1:
            await client.spublish(*messages[0])
            return
        async with client.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.spublish(channel, data)
            await pipe.execute()

    # -- receiving -------------------------------------------------------------
    def _dispatch(self, topic: str, payload: dict[str, Any]) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:  # one faulty subscriber must not stop delivery to the rest
                log.exception("bus handler for %r failed", topic)

    def _on_message(self, channel: str, data: bytes) -> None:
        """One publication; a malformed one (another version, a stray client) is dropped."""
        try:
            self._route(channel[len(self._prefix) :], orjson.loads(data))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            log.warning("redis bus: dropped a malformed publication on %s: %r", channel, e)

    def _route(self, name: str, payload: dict[str, Any]) -> None:
        if name.startswith("c:"):
            self._on_conv_message(name[2:], payload)
        elif name.startswith("u:"):
            self._dispatch(TOPIC_DELIVER, payload)
        elif name == "ctl":
            self._on_control(payload["t"], payload["p"])
        elif name == "presence":
            self._dispatch(TOPIC_PRESENCE, payload)

    def _on_conv_message(self, conv: str, payload: dict[str, Any]) -> None:
        state = self._seqs.get(conv)
        if state is None:  # unsubscribed meanwhile
            return
        action = state.heard(int(payload["seq"]))
        if action is Heard.DELIVER:
            self._dispatch(TOPIC_DELIVER, payload)
        elif action is Heard.FILL:
            self._spawn(self._fill(conv, state))

    def _on_control(self, topic: str, payload: dict[str, Any]) -> None:
        self._dispatch(topic, payload)
        if topic == TOPIC_CONV_CHANGED:
            self._overheard.heard(payload["conv"], payload.get("after"))
            if self._interest.users():
                self._spawn(self._membership_changed(payload["conv"], payload.get("after")))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("redis bus task failed", exc_info=task.exception())

    # -- gap fill --------------------------------------------------------------
    async def _fill(self, conv: str, state: ConvSeq) -> None:
        """Deliver from the store what this node missed in ``conv`` (state.filling is set)."""

        async def fetch(after: int, limit: int) -> list[Message]:
            return await self._store.messages_after(conv, after, limit)

        async def emit(page: Sequence[Message]) -> None:
            await self._deliver_stored(conv, page)

        async def latest() -> int:
            c = await self._store.get_conversation(conv)
            return c.last_seq if c is not None else state.last

        outcome = await fill(  # ends the fill (state.filling) however it ends
            state,
            fetch,
            lambda m: m.seq,
            emit,
            latest,
            page=self.settings.fill_page,
            max_pages=self.settings.fill_max_pages,
        )
        if outcome.overflowed:
            self._resync(self._interest.local_members(conv), RESYNC_BACKLOG, conv)

    async def _deliver_stored(self, conv: str, messages: Sequence[Message]) -> None:
        users = self._interest.local_members(conv)
        if not users:
            return
        for payload in await self.refill(conv, messages, users):
            self._dispatch(TOPIC_DELIVER, payload)

    def _resync(self, users: frozenset[str] | list[str], reason: str, conv: str = "") -> None:
        if not users:
            return
        data: dict[str, Any] = {"reason": reason}
        if conv:
            data["conv"] = conv
        self._dispatch(
            TOPIC_DELIVER, {"recipients": sorted(users), "frame": event_frame("resync", data)}
        )

    # -- interest --------------------------------------------------------------
    async def _user_online(self, user: str) -> None:
        """Subscribe to the user's channel and conversations before they send anything."""
        self._wanted_users.add(user)
        token = self._overheard.start()
        try:
            convs = await self._store.conversations_of(user)
            if user not in self._wanted_users:  # gone again while the store was read
                return
            last = {c.conv: c.last_seq for c in convs}
            async with self._lock:
                change = self._interest.add_user(user, last)
                for conv in change.subscribe:
                    self._seqs.setdefault(conv, ConvSeq(last[conv]))
                await self._apply(
                    [self._user_channel(user), *map(self._conv_channel, change.subscribe)], []
                )
        finally:
            missed = self._overheard.finish(token)
        # Announced after the read but before the user was known here: nobody
        # took it up (see Overheard). From now on announcements find the user.
        for conv, after in missed.items():
            if conv not in last:
                await self._membership_changed(conv, after)
        await self.presence.mark(user, True)

    async def _user_offline(self, user: str) -> None:
        self._wanted_users.discard(user)
        async with self._lock:
            change = self._interest.remove_user(user)
            await self._apply([], [self._user_channel(user)])
        await self.presence.mark(user, False)
        self._linger(change)

    async def _membership_changed(self, conv: str, after: int | None) -> None:
        """Members came or went: (un)subscribe ``conv``; new members get what they missed."""
        members = [m.user for m in await self._store.members(conv)]
        async with self._lock:
            change = self._interest.set_members(conv, members)
            fresh: ConvSeq | None = None
            if change.subscribe and conv not in self._seqs:
                if after is None:
                    c = await self._store.get_conversation(conv)
                    after = c.last_seq if c is not None else 0
                fresh = self._seqs[conv] = ConvSeq(after)
                fresh.start_fill()  # hold doorbells until the catch-up read is done
            await self._apply([self._conv_channel(c) for c in change.subscribe], [])
        self._linger(change)
        if fresh is not None:
            await self._fill(conv, fresh)

    def _linger(self, change: Change) -> None:
        if change.unsubscribe:
            asyncio.get_running_loop().call_later(
                self.settings.linger_s, lambda: self._spawn(self._drop(change.unsubscribe))
            )

    async def _drop(self, convs: tuple[str, ...]) -> None:
        """Unsubscribe conversations that still have no local member after the linger."""
        async with self._lock:
            gone = [c for c in convs if not self._interest.local_members(c) and c in self._seqs]
            for conv in gone:
                del self._seqs[conv]
            await self._apply([], [self._conv_channel(c) for c in gone])

    async def _apply(self, add: list[str], remove: list[str]) -> None:
        """Record the wanted channels; send the (un)subscriptions if connected.

        While disconnected only the record changes: the reconnect subscribes
        whatever is wanted then.
        """
        add = [c for c in add if c not in self._channels]
        remove = [c for c in remove if c in self._channels]
        self._channels.update(add)
        self._channels.difference_update(remove)
        if not self.connected or self._links is None:
            return
        try:
            if add:
                await self._links.subscribe(add)
            if remove:
                await self._links.unsubscribe(remove)
        except (RedisError, OSError) as e:
            log.warning("redis bus: subscribe failed, reconnecting: %s", e)
            self._links.lost.set()

    # -- reconnect -------------------------------------------------------------
    async def _supervise(self) -> None:
        """Wait for a lost link; reconnect with backoff; then fill and resync."""
        while True:
            assert self._links is not None
            await self._links.lost.wait()
            self.connected = False
            await self._links.close()
            delay = self.settings.reconnect_initial_s
            while True:
                await asyncio.sleep(delay * (0.5 + random.random()))  # jitter
                delay = min(delay * 2, self.settings.reconnect_max_s)
                if await self._reconnect():
                    break

    async def _reconnect(self) -> bool:
        links = self._new_links()
        try:
            await self.client.ping()
            async with self._lock:
                await links.subscribe(sorted(self._channels))
                self._links = links
                self.connected = True
        except (RedisError, OSError) as e:
            log.warning("redis bus: reconnect failed: %s", e)
            await links.close()
            return False
        self.reconnects += 1
        log.info("redis bus: reconnected to %s; filling from the store", self.describe)
        await self._flush_outbox()
        self._resync(self._interest.users(), RESYNC_BUS_RECONNECTED)
        for conv, state in list(self._seqs.items()):
            if state.start_fill():
                self._spawn(self._fill(conv, state))
        self._spawn(self._refresh_interest())
        return True

    async def _refresh_interest(self) -> None:
        """Membership changes announced while away were missed: re-read each local user's.

        New conversations start at the store's ``last_seq`` (what came before,
        the ``resync`` just sent makes the clients ``sync``).
        """
        for user in self._interest.users():
            token = self._overheard.start()
            try:
                convs = await self._store.conversations_of(user)
            except BaseException:
                self._overheard.finish(token)
                raise
            last = {c.conv: c.last_seq for c in convs}
            async with self._lock:
                # A conversation announced during the read was (or will be)
                # taken up by its announcement; the read, older, must not undo it.
                heard = self._overheard.finish(token)
                if not self._interest.has_user(user):
                    continue
                keep = self._interest.convs_of(user) & heard.keys()
                change = self._interest.refresh_user(user, keep | last.keys())
                for conv in change.subscribe:
                    self._seqs.setdefault(conv, ConvSeq(last[conv]))
                await self._apply([self._conv_channel(c) for c in change.subscribe], [])
            self._linger(change)

    async def _flush_outbox(self) -> None:
        while self._outbox and self.connected:
            batch = [self._outbox.popleft() for _ in range(min(500, len(self._outbox)))]
            await self._send(batch)


async def _close_quietly(client: Client) -> None:
    try:
        await client.aclose()
    except (RedisError, OSError) as e:
        log.debug("redis bus: closing: %s", e)
