"""Presence: online while at least one device is connected.

On one node the hub is the truth. The ``PresenceDirectory`` interface is the
seam where a cluster-wide directory (kept in Redis) will slot in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from imserver.bus.base import TOPIC_PRESENCE, Bus
from imserver.errors import InvalidField
from imserver.hub import Hub, Socket


class PresenceDirectory(Protocol):
    async def online(self, users: Iterable[str]) -> dict[str, bool]: ...


class LocalPresence:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def online(self, users: Iterable[str]) -> dict[str, bool]:
        return {u: self._hub.is_online(u) for u in users}


class PresenceService:
    def __init__(self, hub: Hub, bus: Bus, directory: PresenceDirectory, max_watch: int) -> None:
        self._hub = hub
        self._bus = bus
        self._directory = directory
        self._max_watch = max_watch

    async def connected(self, sock: Socket) -> None:
        if self._hub.register(sock):
            await self._bus.publish(TOPIC_PRESENCE, {"user": sock.user, "online": True})

    async def disconnected(self, sock: Socket) -> None:
        if self._hub.unregister(sock):
            await self._bus.publish(TOPIC_PRESENCE, {"user": sock.user, "online": False})

    async def query(self, users: tuple[str, ...]) -> dict[str, Any]:
        return {"online": await self._directory.online(users)}

    async def subscribe(self, sock: Socket, users: tuple[str, ...]) -> dict[str, Any]:
        if len(sock.watching | set(users)) > self._max_watch:
            raise InvalidField(
                f"a connection may watch at most {self._max_watch} users", field="users"
            )
        self._hub.watch(sock, users)
        return await self.query(users)

    async def unsubscribe(self, sock: Socket, users: tuple[str, ...]) -> dict[str, Any]:
        self._hub.unwatch(sock, users)
        return {}
