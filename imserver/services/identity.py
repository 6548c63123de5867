"""Identity: tokens issued to a trusted identity app, refresh, revocation.

Zero trust: access tokens are short-lived (``auth.access_ttl_s``) and bound to
a device. A refresh token (stored only as its hash) buys one new pair and is
then spent; presenting a spent one means it was copied, so the device is
signed out. Revoking a user or device refuses every token issued before the
revocation and closes live sockets on every node, through the bus.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from imserver.audit_trail import AuditTrail
from imserver.bus.base import TOPIC_REVOKE, Bus
from imserver.config import AuthConfig
from imserver.errors import (
    Forbidden,
    InvalidField,
    NoSuchUser,
    OutOfScope,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
)
from imserver.protocol.fields import is_user_id
from imserver.store.records import AppRecord, RefreshUse
from imserver.tokens import TokenClaims, TokenSigner

REFRESH_PREFIX = "rt_"


class IdentityStore(Protocol):
    async def existing_users(self, ids: Any) -> set[str]: ...

    async def store_refresh_token(
        self, token_hash: str, user: str, device: str, expires_at: int, now: int
    ) -> None: ...

    async def use_refresh_token(self, token_hash: str, now: int) -> RefreshUse | None: ...

    async def revoke(self, user: str, device: str | None, now: int) -> None: ...

    async def revoked_at(self, user: str, device: str) -> int: ...


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class IdentityService:
    def __init__(
        self,
        store: IdentityStore,
        bus: Bus,
        signer: TokenSigner,
        config: AuthConfig,
        trail: AuditTrail,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._signer = signer
        self._config = config
        self._trail = trail
        self._clock = clock

    async def check(self, claims: TokenClaims) -> None:
        """Refuse a token issued before a revocation of its user or device."""
        if claims.issued_at_ms <= await self._store.revoked_at(claims.user, claims.device):
            raise TokenRevoked("this token was revoked; sign in again")

    async def _pair(self, user: str, device: str) -> dict[str, Any]:
        now = self._clock()
        access = self._signer.mint(user, device, self._config.access_ttl_s, now=now)
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        refresh_expires = int((now + self._config.refresh_ttl_s) * 1000)
        await self._store.store_refresh_token(
            _hash(refresh), user, device, refresh_expires, int(now * 1000)
        )
        return {
            "user": user,
            "device": device,
            "access_token": access,
            "expires_at": int((now + self._config.access_ttl_s) * 1000),
            "refresh_token": refresh,
            "refresh_expires_at": refresh_expires,
        }

    async def issue(self, app: AppRecord, body: Any) -> dict[str, Any]:
        """Tokens for a user the identity app has authenticated (its own business)."""
        if "tokens" not in app.permissions:
            raise Forbidden(f"app {app.app_id} may not issue user tokens")
        user = body.get("user") if isinstance(body, dict) else None
        device = body.get("device") if isinstance(body, dict) else None
        if not is_user_id(user):
            raise InvalidField("'user' must be a user id", field="user")
        if not is_user_id(device):
            raise InvalidField(
                "'device' must be a device id (1-64 of A-Z a-z 0-9 _ . @ -)", field="device"
            )
        assert isinstance(user, str) and isinstance(device, str)
        if "*" not in app.scope and f"user:{user}" not in app.scope:
            raise OutOfScope(f"user {user} is outside app {app.app_id}'s scope")
        if not await self._store.existing_users([user]):
            raise NoSuchUser(f"no active user {user!r}")
        pair = await self._pair(user, device)
        await self._trail.record(f"app:{app.app_id}", "identity.issue", user, {"device": device})
        return pair

    async def refresh(self, body: Any) -> dict[str, Any]:
        token = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.startswith(REFRESH_PREFIX) or len(token) > 128:
            raise InvalidField("'refresh_token' is required", field="refresh_token")
        now = int(self._clock() * 1000)
        use = await self._store.use_refresh_token(_hash(token), now)
        if use is None:
            raise TokenInvalid("unknown refresh token")
        if use.outcome == "reused":
            # A spent token came back: someone holds a copy. Sign the device out.
            await self.revoke("system", use.user, use.device, reason="refresh token reused")
            raise TokenInvalid("refresh token already used; the device was signed out")
        if use.outcome == "expired":
            raise TokenExpired("refresh token expired; sign in again")
        if not await self._store.existing_users([use.user]):
            raise TokenInvalid("the user no longer exists")
        return await self._pair(use.user, use.device)

    async def revoke(self, actor: str, user: str, device: str | None, *, reason: str = "") -> None:
        await self._store.revoke(user, device, int(self._clock() * 1000))
        await self._bus.publish(TOPIC_REVOKE, {"user": user, "device": device})
        await self._trail.record(
            actor, "identity.revoke", user, {"device": device, "reason": reason}
        )
