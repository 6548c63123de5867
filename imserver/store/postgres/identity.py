"""PostgreSQL side of identity: refresh tokens (stored hashed) and revocations.

``use_refresh_token`` locks the token's row (``FOR UPDATE``), so when two
nodes are handed the same refresh token at once exactly one sees "ok" and the
other "reused" — as on one SQLite writer.
"""

from __future__ import annotations

from imserver.store.postgres.jobs import PgConn, PgJobs
from imserver.store.records import ALL_DEVICES, RefreshUse


class PgIdentityMixin(PgJobs):
    async def store_refresh_token(
        self, token_hash: str, user: str, device: str, expires_at: int, now: int
    ) -> None:
        async def job(conn: PgConn) -> None:
            await conn.execute(
                'INSERT INTO refresh_tokens (hash, "user", device, expires_at, created_at)'
                " VALUES ($1, $2, $3, $4, $5)",
                token_hash,
                user,
                device,
                expires_at,
                now,
            )

        await self._write(job)

    async def use_refresh_token(self, token_hash: str, now: int) -> RefreshUse | None:
        """Mark the token used (one use only) and say what it was; None if unknown."""

        async def job(conn: PgConn) -> RefreshUse | None:
            row = await conn.fetchrow(
                'SELECT "user", device, expires_at, used FROM refresh_tokens WHERE hash = $1'
                " FOR UPDATE",
                token_hash,
            )
            if row is None:
                return None
            user, device, expires_at, used = row
            found = RefreshUse.of(user, device, expires_at, bool(used), now)
            if found.outcome != "reused":
                await conn.execute(
                    "UPDATE refresh_tokens SET used = TRUE WHERE hash = $1", token_hash
                )
            return found

        return await self._write(job)

    async def revoke(self, user: str, device: str | None, now: int) -> None:
        """Refuse the user's (or one device's) tokens issued before now; drop refresh tokens."""

        async def job(conn: PgConn) -> None:
            await conn.execute(
                'INSERT INTO revocations ("user", device, revoked_at) VALUES ($1, $2, $3)'
                ' ON CONFLICT ("user", device) DO UPDATE SET revoked_at = excluded.revoked_at',
                user,
                device or ALL_DEVICES,
                now,
            )
            await conn.execute(
                'UPDATE refresh_tokens SET used = TRUE WHERE "user" = $1'
                " AND ($2::text IS NULL OR device = $2)",
                user,
                device,
            )

        await self._write(job)

    async def revoked_at(self, user: str, device: str) -> int:
        """The latest revocation covering this device (ms), or 0."""

        async def job(conn: PgConn) -> int:
            at = await conn.fetchval(
                'SELECT coalesce(max(revoked_at), 0) FROM revocations WHERE "user" = $1'
                " AND device IN ($2, $3)",
                user,
                device,
                ALL_DEVICES,
            )
            return int(at)

        return await self._read(job)
