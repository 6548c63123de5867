"""The bus interface.

Payloads are plain maps of JSON-compatible values, so a networked bus (Redis
pub/sub) can carry them unchanged. Handlers are synchronous: the hub writes
bytes to sockets without awaiting, which keeps fan-out cheap and ordered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Handler = Callable[[dict[str, Any]], None]

#: A message event for ``recipients`` (user ids): ``{"recipients": [...], "frame": {...}}``,
#: optionally ``"skip_device": [user, device]``. A stored message also carries its
#: ``"conv"`` and ``"seq"`` (a networked bus routes by conversation and fills gaps
#: from the store); one whose readers see different frames comes as
#: ``{"variants": [{"recipients", "frame"}, ...], "conv", "seq"}``.
TOPIC_DELIVER = "deliver"
#: A user went online or offline: ``{"user": ..., "online": bool}``.
TOPIC_PRESENCE = "presence"
#: A conversation's membership or roles changed: ``{"conv": ...}`` (drop caches).
TOPIC_CONV_CHANGED = "conv"


class Bus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, topic: str, payload: dict[str, Any]) -> None: ...

    def subscribe(self, topic: str, handler: Handler) -> None: ...


#: Close a user's (or one device's) live sockets: ``{"user": ..., "device": ... | None}``.
TOPIC_REVOKE = "revoke"
#: A directory sync changed the address book: ``{"cursor": n}`` (the newest change).
TOPIC_DIRECTORY = "directory"
#: An app was deleted, its secret rotated or its registration replaced:
#: ``{"app_id": ..., "change": "deleted" | "secret_rotated" | "replaced"}``; every
#: node closes what no longer verifies (cards: the app's streams).
TOPIC_APP_CHANGED = "app"
