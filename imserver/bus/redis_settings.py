"""What a Redis bus is built from: its settings, and what it reads from the store.

Kept apart from ``redis.py`` so the composition root and the config loader
can name them without the bus's machinery.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol

from imserver.bus.redis_links import RedisAuth
from imserver.store.records import Conversation, ConvState, Member, Message


@dataclass(slots=True, frozen=True)
class RedisBusSettings:
    url: str = "redis://127.0.0.1:6379/0"
    cluster_nodes: tuple[str, ...] = ()
    prefix: str = "imserver:"
    #: ACL user and password of every connection (``[bus] redis_username`` / ``redis_password``).
    auth: RedisAuth = field(default_factory=RedisAuth)
    #: Gap fill: messages per store read, and reads before giving up (-> ``resync``).
    fill_page: int = 200
    fill_max_pages: int = 5
    #: Publications kept while Redis is unreachable, sent after the reconnect.
    outbox_max: int = 10_000
    #: A conversation nobody here needs any more stays subscribed this long
    #: (a removed member still hears the notice of their removal; a phone
    #: that reconnects at once costs no resubscribe).
    linger_s: float = 5.0
    reconnect_initial_s: float = 0.05
    reconnect_max_s: float = 5.0
    #: ``CLIENT SETNAME`` of this node's subscriber connections (``CLIENT LIST``).
    node_name: str = field(default_factory=lambda: "imserver-bus-" + secrets.token_hex(4))


class BusStore(Protocol):
    """What the bus reads from the store: interest and gap fill."""

    async def conversations_of(self, user: str) -> list[ConvState]: ...

    async def get_conversation(self, conv: str) -> Conversation | None: ...

    async def members(self, conv: str) -> list[Member]: ...

    async def messages_after(self, conv: str, after_seq: int, limit: int) -> list[Message]: ...
