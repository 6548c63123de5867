"""Logged-out dashboard sessions, refused by every node of a cluster until they expire.

The session cookie is signed, not stored (``session.py``), so logging out
must be remembered somewhere every node looks. Two paths, because either
alone falls short:

* **The store** (table ``dashboard_logouts``, schema version 13) is the
  record: written before the logout answers, kept until the session's own
  expiry, then purged. A node that was down or cut from Redis during the
  logout reads it there.
* **The bus** (topic ``dashboard_logout``, on Redis the broadcast ``ctl``
  channel) is the doorbell: every node adds the id at once and ends its open
  live streams of that session.

The check runs on every dashboard request, so it reads memory: the set of
logged-out ids, which the bus event updates and which is re-read from the
store at most every ``REFRESH_S`` while the dashboard is in use (one small
indexed query per node, however many screens). A logout therefore takes
effect on a node within a second through the bus, and within ``REFRESH_S``
(plus a live stream's one-second tick) without it.

If the store cannot be read, the set in memory (with bus events) keeps
serving and the read is retried after ``RETRY_S``: the live numbers stay on
the screen during a database outage, and every data endpoint needs the
store anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from imserver.bus.base import TOPIC_REVOKE, Bus
from imserver.dashboard.session import Session
from imserver.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: ``{"sid": ..., "expires_at": s}``: a dashboard session was logged out (broadcast).
TOPIC_DASHBOARD_LOGOUT = "dashboard_logout"
REFRESH_S = 5.0
RETRY_S = 1.0
MAX_LOGGED_OUT = 10_000
"""Logged-out ids held (and read from the store); past it the soonest to expire are dropped."""
_MAX_SID = 64


class LogoutStore(Protocol):
    """The store's side (``store/sqlite/dashboard_logouts.py``, ``store/postgres/…``)."""

    async def add_dashboard_logout(self, sid: str, expires_at: int, now: int) -> None: ...

    async def dashboard_logouts(self, now: int, limit: int) -> list[tuple[str, int]]: ...


@dataclass
class LoggedOutSessions:
    """Which session ids are logged out, and the open live streams to end when one is."""

    store: LogoutStore
    bus: Bus
    refresh_s: float = REFRESH_S
    clock: Callable[[], float] = time.time  # wall clock: expiries are epoch seconds
    monotonic: Callable[[], float] = time.monotonic
    _gone: dict[str, int] = field(default_factory=dict)  # sid -> expires_at (s)
    _next_read: float = -math.inf  # monotonic: when the store is read again
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _streams: dict[asyncio.Event, Session] = field(default_factory=dict)
    _started: bool = False

    def start(self) -> None:
        """Hear logouts and user revocations from every node (once)."""
        if not self._started:
            self._started = True
            self.bus.subscribe(TOPIC_DASHBOARD_LOGOUT, self._on_logout)
            self.bus.subscribe(TOPIC_REVOKE, self._on_revoke)

    async def is_logged_out(self, sid: str) -> bool:
        """Whether ``sid`` was logged out on any node (memory; the store now and then)."""
        if self.monotonic() >= self._next_read:
            await self.refresh()
        return sid in self._gone

    async def refresh(self) -> None:
        """Merge the store's record into memory (single flight: one read per node at a time)."""
        async with self._lock:
            if self.monotonic() < self._next_read:
                return  # another request read it while this one waited
            now = int(self.clock())
            try:
                rows = await self.store.dashboard_logouts(now, MAX_LOGGED_OUT)
            except StoreUnavailable as e:
                self._next_read = self.monotonic() + RETRY_S
                log.warning("dashboard: logged-out sessions not re-read (store unavailable): %s", e)
                return
            self._next_read = self.monotonic() + self.refresh_s
            for sid, expires_at in rows:
                self._gone[sid] = expires_at
            self._prune(now)

    async def log_out(self, s: Session) -> None:
        """End ``s`` here at once, then in the store (the record), then on the bus (the bell)."""
        now = int(self.clock())
        self._add(s.sid, s.expires_at, now)
        await self.store.add_dashboard_logout(s.sid, s.expires_at, now)
        await self.bus.publish(TOPIC_DASHBOARD_LOGOUT, {"sid": s.sid, "expires_at": s.expires_at})

    @contextlib.contextmanager
    def watch(self, s: Session) -> Iterator[asyncio.Event]:
        """An event set when ``s`` may have ended (its logout, its user's revocation).

        A live stream waits on it between ticks and checks its viewer again
        when it is set.
        """
        poke = asyncio.Event()
        self._streams[poke] = s
        try:
            yield poke
        finally:
            del self._streams[poke]

    def _add(self, sid: str, expires_at: int, now: int) -> None:
        if expires_at <= now:
            return  # already expired: the cookie is refused for that alone
        self._gone[sid] = expires_at
        self._prune(now)
        for poke, s in self._streams.items():
            if s.sid == sid:
                poke.set()

    def _prune(self, now: int) -> None:
        for sid in [sid for sid, at in self._gone.items() if at <= now]:
            del self._gone[sid]
        if len(self._gone) > MAX_LOGGED_OUT:
            keep = sorted(self._gone.items(), key=lambda kv: kv[1], reverse=True)[:MAX_LOGGED_OUT]
            self._gone = dict(keep)

    def _on_logout(self, payload: dict[str, Any]) -> None:
        sid, expires_at = payload.get("sid"), payload.get("expires_at")
        if not isinstance(sid, str) or not 0 < len(sid) <= _MAX_SID:
            log.warning("dashboard: ignored a malformed logout event: %r", payload)
            return
        if not isinstance(expires_at, int) or isinstance(expires_at, bool):
            log.warning("dashboard: ignored a malformed logout event: %r", payload)
            return
        self._add(sid, expires_at, int(self.clock()))

    def _on_revoke(self, payload: dict[str, Any]) -> None:
        """A user's tokens were revoked: their streams check again now, not at the next tick."""
        user = payload.get("user")
        for poke, s in self._streams.items():
            if s.user is not None and s.user == user:
                poke.set()
