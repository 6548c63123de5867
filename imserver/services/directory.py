"""The organisation directory: bulk sync from the HR system, and queries.

A sync arrives as NDJSON (one unit or member per line) and is applied in
batches as it streams in, so 100,000 members never sit in memory at once. It
is idempotent — the same input again reports no changes — so a sync that
failed half-way is simply sent again. A full sync also removes every unit,
membership and (previously synced) member it did not mention.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from imserver.bus.base import TOPIC_DIRECTORY, TOPIC_REVOKE, Bus
from imserver.directory.model import (
    MemberOp,
    SyncReport,
    Unit,
    parse_sync_line,
)
from imserver.errors import InvalidField, NoSuchUnit
from imserver.store.records import MemberProfile, SyncBatch, UnitMemberRow

BATCH = 1000
MAX_LINE_BYTES = 64 * 1024


class ProfileSealer(Protocol):
    """Turns a member's contact fields into what is stored (e.g. encrypted)."""

    def seal(self, user: str, profile: dict[str, str]) -> tuple[dict[str, str], str]:
        """(stored profile, digest of the clear profile for change detection)."""

    def open(self, user: str, stored: dict[str, str]) -> dict[str, str]:
        """The clear profile back from what was stored."""


class PlainProfiles:
    """Stores profiles as given; the default until field encryption is configured."""

    def seal(self, user: str, profile: dict[str, str]) -> tuple[dict[str, str], str]:
        digest = hashlib.sha256(orjson.dumps(profile, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return profile, digest

    def open(self, user: str, stored: dict[str, str]) -> dict[str, str]:
        return dict(stored)


class DirectoryStore(Protocol):
    async def begin_directory_sync(self) -> int:
        """A new sync generation number."""

    async def apply_directory_batch(
        self, ops: SyncBatch, gen: int, now: int, full: bool = False
    ) -> SyncReport:
        """Apply ``(line, op, stored_profile, profile_digest)`` in one transaction.

        A bad line (unknown parent, level out of order, a move into its own
        subtree) undoes the whole batch and names the line.
        """

    async def sweep_directory(self, gen: int) -> SyncReport:
        """End of a full sync: remove what the sync did not mention."""

    async def get_unit(self, unit_id: str) -> Unit | None: ...

    async def units_by_ids(self, ids: Any) -> dict[str, Unit]: ...

    async def subtree(self, path: str, max_depth: int, limit: int) -> list[Unit]: ...

    async def unit_members(
        self, path: str, recursive: bool, after: tuple[str, str], limit: int
    ) -> list[UnitMemberRow]:
        """Active memberships in the unit (and its subtree), ordered by (user, unit
        path), after the ``(user, path)`` cursor — one person in two units is two rows."""

    async def unit_recipients(self, targets: Any) -> set[str]:
        """Active users in the given (unit path, include sub-units) targets."""

    async def user_memberships(self, user: str) -> list[tuple[Unit, str, bool]]: ...

    async def users_with_scope(self, users: Any, scope: str) -> set[str]: ...

    async def unit_leaders(self, unit_ids: Any) -> dict[str, list[str]]: ...

    async def directory_cursor(self) -> int: ...

    async def count_unit_members(self) -> None:
        """Refresh ``units.members`` (after a sync that changed the directory)."""


async def ndjson_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, line) from a byte stream, without holding more than one line."""
    buf = b""
    n = 0
    async for chunk in chunks:
        buf += chunk
        while True:
            i = buf.find(b"\n")
            if i < 0:
                if len(buf) > MAX_LINE_BYTES:
                    raise InvalidField(f"line {n + 1} is longer than {MAX_LINE_BYTES} bytes")
                break
            n += 1
            line, buf = buf[:i], buf[i + 1 :]
            if line.strip():
                yield n, line
    if buf.strip():
        yield n + 1, buf


class DirectoryService:
    def __init__(
        self,
        store: DirectoryStore,
        bus: Bus,
        sealer: ProfileSealer | None = None,
        clock: Callable[[], float] = time.time,
        on_removed: Callable[[list[str]], Any] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self.sealer: ProfileSealer = sealer or PlainProfiles()
        self._clock = clock
        #: Called with users a sync removed (the composition root removes them from groups).
        self.on_removed = on_removed

    async def sync(self, chunks: AsyncIterator[bytes], *, full: bool) -> SyncReport:
        """Apply a sync; then, if it changed anything, one ``directory`` event to everyone."""
        before = await self._store.directory_cursor()
        try:
            return await self._apply(chunks, full=full)
        finally:
            # Also after a failed sync: the batches before the bad line are applied.
            after = await self._store.directory_cursor()
            if after != before:
                await self._store.count_unit_members()
                await self._bus.publish(TOPIC_DIRECTORY, {"cursor": after})

    async def _apply(self, chunks: AsyncIterator[bytes], *, full: bool) -> SyncReport:
        gen = await self._store.begin_directory_sync()
        report = SyncReport()
        batch: SyncBatch = []
        now = int(self._clock() * 1000)
        async for n, raw in ndjson_lines(chunks):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise InvalidField(f"line {n}: not valid JSON", field=f"line[{n}]") from None
            op = parse_sync_line(obj, n, full=full)
            if isinstance(op, MemberOp):
                stored, digest = self.sealer.seal(op.user, op.profile)
                batch.append((n, op, stored, digest))
            else:
                batch.append((n, op, None, ""))
            if len(batch) >= BATCH:
                report.add(await self._store.apply_directory_batch(batch, gen, now, full))
                batch = []
        if batch:
            report.add(await self._store.apply_directory_batch(batch, gen, now, full))
        if full:
            report.add(await self._store.sweep_directory(gen))
        if report.removed_users:
            for user in report.removed_users:
                await self._bus.publish(TOPIC_REVOKE, {"user": user, "device": None})
            if self.on_removed is not None:
                await self.on_removed(report.removed_users)
        return report

    def sealer_open(self, profile: MemberProfile) -> dict[str, str]:
        return self.sealer.open(profile.user, profile.profile)

    # -- queries -------------------------------------------------------------
    async def unit(self, unit_id: str) -> Unit:
        unit = await self._store.get_unit(unit_id)
        if unit is None:
            raise NoSuchUnit(f"no unit {unit_id!r}")
        return unit

    async def subtree(self, unit: Unit, depth: int, limit: int = 5000) -> list[dict[str, Any]]:
        return [unit_json(u) for u in await self._store.subtree(unit.path, depth, limit)]

    async def members(self, unit: Unit, recursive: bool, after: str, limit: int) -> dict[str, Any]:
        user, _, path = after.partition("|")
        rows = await self._store.unit_members(unit.path, recursive, (user, path), limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "members": [
                {
                    "user": r.user,
                    "name": r.name,
                    "unit": r.unit,
                    "title": r.title,
                    "leader": r.leader,
                }
                for r in rows
            ],
            # An opaque cursor: "user|unit path" (a person may have rows in two units).
            "next_after": f"{rows[-1].user}|{rows[-1].path}" if more and rows else None,
        }

    async def placement(self, user: str) -> list[dict[str, Any]]:
        """The user's units, each with its chain of ancestors and their leaders (上级)."""
        memberships = await self._store.user_memberships(user)
        ancestor_ids = {a for unit, _, _ in memberships for a in ancestors(unit)}
        units = await self._store.units_by_ids(ancestor_ids)
        leaders = await self._store.unit_leaders(ancestor_ids)
        out = []
        for unit, title, leader in memberships:
            chain = []
            for uid in reversed(ancestors(unit)):  # nearest first
                u = units.get(uid)
                if u is None:
                    continue
                chain.append(
                    {**unit_json(u), "leaders": [x for x in leaders.get(uid, []) if x != user]}
                )
            out.append({"unit": unit_json(unit), "title": title, "leader": leader, "chain": chain})
        return out

    async def recipients(self, units: list[tuple[Unit, bool]]) -> set[str]:
        return await self._store.unit_recipients([(u.path, rec) for u, rec in units])


def ancestors(unit: Unit) -> list[str]:
    """Ids from the root down to ``unit`` itself."""
    return [p for p in unit.path.split("/") if p]


def unit_json(u: Unit) -> dict[str, Any]:
    return {"id": u.id, "parent": u.parent, "name": u.name, "level": u.level, "path": u.path}
