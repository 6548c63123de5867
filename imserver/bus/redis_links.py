"""The Redis connections of the bus: one client for commands, one pub/sub link per shard.

Everything uses *sharded* pub/sub (``SPUBLISH`` / ``SSUBSCRIBE``, Redis >= 7.0):
on a single Redis it behaves like plain pub/sub; on a Redis Cluster a channel
lives on the one master that owns its hash slot, so a published message
crosses one shard instead of being broadcast to every cluster node. Each
master this node needs gets its own subscriber connection (a ``Link``).

The links do not reconnect by themselves (redis-py's silent resubscribe is
switched off with a zero-retry policy): a reconnect must be *noticed*,
because whatever was published meanwhile is gone and the bus fills it from
the store. Any read error on any link sets ``lost``; the bus then tears all
links down, reconnects with backoff and resubscribes everything.

Every connection -- the command client, each link, each cluster node --
authenticates with the same :class:`RedisAuth` (``[bus] redis_username`` /
``redis_password``); a password in ``redis_url`` works too, for one Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

#: A quiet subscriber link is pinged after this long, and lost without an answer.
PING_AFTER_S = 10.0
PONG_TIMEOUT_S = 10.0
#: A subscription Redis has not confirmed by then counts as a lost link.
CONFIRM_TIMEOUT_S = 10.0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


Client = Redis | RedisCluster
OnMessage = Callable[[str, bytes], None]


def parse_node(spec: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; the config checks the form."""
    host, _, port = spec.rpartition(":")
    return host, int(port)


@dataclass(slots=True, frozen=True)
class RedisAuth:
    """The ACL user and password every bus connection sends (``AUTH``/``HELLO``).

    Kept out of ``repr`` so that no log line or traceback shows the password.
    Empty: no ``AUTH`` (or whatever ``redis_url`` carries).
    """

    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def user(self) -> str | None:
        """For redis-py (None: not sent); credentials in a URL win over these."""
        return self.username or None

    @property
    def secret(self) -> str | None:
        return self.password or None


NO_AUTH = RedisAuth()


def make_client(url: str, cluster_nodes: tuple[str, ...], auth: RedisAuth = NO_AUTH) -> Client:
    """The command client: a Redis Cluster when nodes are listed, else one Redis."""
    if cluster_nodes:
        nodes = [ClusterNode(*parse_node(n)) for n in cluster_nodes]
        return RedisCluster(
            startup_nodes=nodes,
            socket_connect_timeout=3.0,
            username=auth.user,
            password=auth.secret,
        )
    return Redis.from_url(url, socket_connect_timeout=3.0, username=auth.user, password=auth.secret)


def describe(url: str, cluster_nodes: tuple[str, ...]) -> str:
    """Where the bus connects, for logs and errors (no password)."""
    if cluster_nodes:
        return "Redis Cluster " + ", ".join(cluster_nodes)
    tail = url.rsplit("@", 1)[-1]
    return tail if "://" in tail else url.split("://", 1)[0] + "://" + tail


def start_error(where: str, e: BaseException) -> str:
    """The one start-up line: unreachable, or reachable but refusing this node.

    Redis's own reason is quoted (it never contains the password); a
    cluster wraps it (``RedisClusterException`` from the node's error).
    """
    cause = e.__cause__ if isinstance(e, RedisClusterException) else e
    reason = cause if cause is not None else e
    if isinstance(reason, AuthenticationError):
        said = str(reason)
        if said.startswith(("HELLO must be called", "Authentication required")):  # none sent
            said = "Redis requires a password and none was sent"
        return (
            f"the Redis bus at {where} refused this node's credentials ({said}); set [bus]"
            " redis_username / redis_password (IMSERVER_BUS_REDIS_USERNAME /"
            " IMSERVER_BUS_REDIS_PASSWORD, or the password in redis_url) to a user and"
            " password that Redis accepts"
        )
    if isinstance(reason, NoPermissionError):
        return (
            f"the Redis bus at {where} refused a command of this node's user ({reason});"
            " allow that user the bus's commands, keys and channels (ACL SETUSER, docs/cluster.md)"
        )
    return (
        f"cannot reach the Redis bus at {where} ({e}); start Redis there,"
        " or fix [bus] redis_url / redis_cluster_nodes (IMSERVER_BUS_REDIS_URL),"
        ' or use [bus] backend = "local" for a single node'
    )


@dataclass(slots=True)
class Link:
    """One subscriber connection, to one Redis (or one cluster master)."""

    redis: Redis
    pubsub: PubSub
    channels: set[str] = field(default_factory=set)
    reader: asyncio.Task[None] | None = None


class Links:
    """Subscriber connections, created on demand per shard, dropped together."""

    def __init__(
        self,
        client: Client,
        on_message: OnMessage,
        name: str,
        url: str,
        auth: RedisAuth = NO_AUTH,
    ) -> None:
        self._client = client
        self._name = name
        self._url = url  # a single Redis: its one link connects here
        self._auth = auth
        self._on_message = on_message
        self._links: dict[str, Link] = {}
        #: Subscriptions sent and not yet confirmed by Redis.
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        #: Set when a link fails; the bus waits on it to reconnect.
        self.lost = asyncio.Event()

    def _link(self, channel: str) -> Link:
        """The link for ``channel``: the one Redis, or the master owning its slot."""
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(channel)
            if node is None:
                raise RedisError(f"no cluster node owns the slot of {channel!r}")
            name = f"{node.host}:{node.port}"
        else:
            name = "single"
        link = self._links.get(name)
        if link is None:
            retry = Retry(NoBackoff(), 0)
            user, secret = self._auth.user, self._auth.secret
            if isinstance(self._client, RedisCluster):
                host, port = parse_node(name)
                redis = Redis(
                    host=host,
                    port=port,
                    retry=retry,
                    client_name=self._name,
                    username=user,
                    password=secret,
                )
            else:
                redis = Redis.from_url(
                    self._url, retry=retry, client_name=self._name, username=user, password=secret
                )
            link = Link(redis, redis.pubsub())
            self._links[name] = link
        return link

    async def subscribe(self, channels: list[str]) -> None:
        """``SSUBSCRIBE`` and wait until Redis confirms every channel.

        One command per hash slot on a cluster, one in all on a single Redis.
        The wait is what makes "subscribe, then read the store" safe: once
        Redis has processed the subscription, anything published later
        reaches this node, and anything published earlier was committed
        earlier, so the store read that follows sees it.
        """
        loop = asyncio.get_running_loop()
        waits = [self._confirmations.setdefault(c, loop.create_future()) for c in channels]
        cluster = isinstance(self._client, RedisCluster)
        by_link: dict[int, tuple[Link, list[str]]] = {}
        for channel in channels:
            link = self._link(channel)
            slot = key_slot(channel.encode()) if cluster else 0
            by_link.setdefault(slot, (link, []))[1].append(channel)
        for link, names in by_link.values():
            await link.pubsub.ssubscribe(*names)
            link.channels.update(names)
            if link.reader is None:
                link.reader = asyncio.create_task(self._read(link), name="redis-bus-reader")
        try:
            await asyncio.wait_for(asyncio.gather(*waits), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            raise RedisConnectionError("Redis did not confirm a subscription in time") from None

    async def unsubscribe(self, channels: list[str]) -> None:
        for channel in channels:
            for link in self._links.values():
                if channel in link.channels:
                    link.channels.discard(channel)
                    await link.pubsub.sunsubscribe(channel)

    async def _read(self, link: Link) -> None:
        """Hand every message to the bus; any sign of a broken link sets ``lost``.

        A connection can die silently (a partition drops packets without a
        reset): after ``PING_AFTER_S`` without traffic the link pings, and no
        answer within ``PONG_TIMEOUT_S`` counts as lost. A ``sunsubscribe``
        the node did not ask for (a cluster slot moved to another master) is
        lost too: the reconnect subscribes on the new owner and fills.
        """
        clock = asyncio.get_running_loop().time
        last_heard = clock()
        pinged = False
        try:
            while True:
                message = await link.pubsub.get_message(timeout=1.0)
                now = clock()
                if message is None:
                    if not pinged and now - last_heard > PING_AFTER_S:
                        await link.pubsub.ping()
                        pinged = True
                    elif pinged and now - last_heard > PING_AFTER_S + PONG_TIMEOUT_S:
                        raise RedisConnectionError("no answer to PING on the subscriber link")
                    continue
                last_heard, pinged = now, False
                kind = _text(message["type"])
                if kind == "smessage":
                    self._on_message(_text(message["channel"]), message["data"])
                elif kind == "ssubscribe":
                    confirmed = self._confirmations.pop(_text(message["channel"]), None)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(None)
                elif kind == "sunsubscribe" and _text(message["channel"]) in link.channels:
                    raise RedisConnectionError(f"unsubscribed by Redis: {message['channel']!r}")
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as e:
            log.warning("redis bus: subscriber connection lost: %s", e)
            self._fail_waiting(e)  # e.g. NoPermissionError: say so now, not at the timeout
            self.lost.set()
        except Exception:  # a bug in a handler must not silently end the reader
            log.exception("redis bus: reader failed")
            self.lost.set()

    def _fail_waiting(self, error: BaseException) -> None:
        """Every subscription still waiting for Redis's confirmation fails with ``error``."""
        waiting, self._confirmations = list(self._confirmations.values()), {}
        for confirmed in waiting:
            if not confirmed.done():
                confirmed.set_exception(error)
                confirmed.exception()  # retrieved: nobody may be waiting any more

    async def close(self) -> None:
        """Drop every link (the bus resubscribes on fresh ones)."""
        links, self._links = list(self._links.values()), {}
        self._fail_waiting(RedisConnectionError("subscriber link closed"))
        for link in links:
            if link.reader is not None:
                link.reader.cancel()
        for link in links:
            if link.reader is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):  # torn down
                    await link.reader
            try:
                # Untyped before redis-py 8.
                await link.pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                await link.redis.aclose()
            except (RedisError, OSError) as e:
                log.debug("redis bus: closing a link: %s", e)

    def count(self) -> int:
        return len(self._links)
