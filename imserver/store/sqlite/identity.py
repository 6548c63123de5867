"""SQLite side of identity: refresh tokens (stored hashed) and revocations."""

from __future__ import annotations

import sqlite3

from imserver.store.records import ALL_DEVICES, RefreshUse
from imserver.store.sqlite.jobs import SqliteJobs


class SqliteIdentityMixin(SqliteJobs):
    async def store_refresh_token(
        self, token_hash: str, user: str, device: str, expires_at: int, now: int
    ) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO refresh_tokens (hash, user, device, expires_at, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_hash, user, device, expires_at, now),
            )

        await self._write(job)

    async def use_refresh_token(self, token_hash: str, now: int) -> RefreshUse | None:
        """Mark the token used (one use only) and say what it was; None if unknown."""

        def job(conn: sqlite3.Connection) -> RefreshUse | None:
            row = conn.execute(
                "SELECT user, device, expires_at, used FROM refresh_tokens WHERE hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                return None
            user, device, expires_at, used = row
            found = RefreshUse.of(user, device, expires_at, bool(used), now)
            if found.outcome != "reused":
                conn.execute("UPDATE refresh_tokens SET used = 1 WHERE hash = ?", (token_hash,))
            return found

        return await self._write(job)

    async def revoke(self, user: str, device: str | None, now: int) -> None:
        """Refuse the user's (or one device's) tokens issued before now; drop refresh tokens."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO revocations (user, device, revoked_at) VALUES (?, ?, ?)"
                " ON CONFLICT (user, device) DO UPDATE SET revoked_at = excluded.revoked_at",
                (user, device or ALL_DEVICES, now),
            )
            if device is None:
                conn.execute("UPDATE refresh_tokens SET used = 1 WHERE user = ?", (user,))
            else:
                conn.execute(
                    "UPDATE refresh_tokens SET used = 1 WHERE user = ? AND device = ?",
                    (user, device),
                )

        await self._write(job)

    async def revoked_at(self, user: str, device: str) -> int:
        """The latest revocation covering this device (ms), or 0."""

        def job(conn: sqlite3.Connection) -> int:
            (at,) = conn.execute(
                "SELECT coalesce(max(revoked_at), 0) FROM revocations"
                " WHERE user = ? AND device IN (?, ?)",
                (user, device, ALL_DEVICES),
            ).fetchone()
            return int(at)

        return await self._read(job)
