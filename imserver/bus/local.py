"""In-process bus for a single node: publish calls the subscribers directly."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from imserver.bus.base import Handler

log = logging.getLogger(__name__)


class LocalBus:
    def __init__(self) -> None:
        self._handlers: defaultdict[str, list[Handler]] = defaultdict(list)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._handlers.clear()

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:  # one faulty subscriber must not stop delivery to the rest
                log.exception("bus handler for %r failed", topic)

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)
