"""Recording security-relevant events in the audit log.

One small seam so services and HTTP handlers say *what* happened without
knowing how the chain is stored. Events that change the store together with
their record go through the store's write job instead (see ``CardChange``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from imserver.audit.chain import AuditRecord


class AuditLog(Protocol):
    async def append(
        self, at: int, actor: str, action: str, target: str, details: dict[str, Any]
    ) -> AuditRecord: ...


class AuditTrail:
    def __init__(self, log: AuditLog, clock: Callable[[], float] = time.time) -> None:
        self._log = log
        self._clock = clock

    async def record(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        await self._log.append(int(self._clock() * 1000), actor, action, target, details or {})
