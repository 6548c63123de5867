"""The dashboard's login cookie: a signed, expiring statement of who logged in (pure).

Why signed and not a server-side session table: every node of a cluster
verifies it with the shared token secret, so a load balancer may send the
page's requests to any node, and a restart does not log the wall screen out.
What it cannot carry is checked again on every request (``auth.py``): a
scoped admin's grants and revocations, and for the admin key, that the key
is still the one the cookie was made with (``key_print``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

COOKIE = "imserver_dashboard"
SESSION_TTL_S = 12 * 3600
"""A working day and a night shift: the wall screen logs in once a day."""
KIND_KEY, KIND_USER = "key", "user"


@dataclass(slots=True, frozen=True)
class Session:
    kind: str  # KIND_KEY (the operator's admin key) or KIND_USER (a scoped admin's token)
    user: str | None
    device: str | None
    issued_at_ms: int  # the token's: a revocation after it ends the session too
    expires_at: int  # s
    sid: str  # random: names this session for logout and derives its CSRF token
    key_print: str  # for KIND_KEY: a fingerprint of the key it was made with


class SessionCodec:
    """Encodes and verifies sessions with one key (``TokenSigner.derive_key``)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def key_print(self, admin_key: str) -> str:
        """A fingerprint of the admin key: a session dies when the operator changes the key."""
        return hmac.new(self._key, b"admin-key:" + admin_key.encode(), hashlib.sha256).hexdigest()[
            :32
        ]

    def new(
        self,
        kind: str,
        now: float,
        *,
        user: str | None = None,
        device: str | None = None,
        issued_at_ms: int = 0,
        admin_key: str = "",
    ) -> Session:
        return Session(
            kind=kind,
            user=user,
            device=device,
            issued_at_ms=issued_at_ms,
            expires_at=int(now) + SESSION_TTL_S,
            sid=secrets.token_urlsafe(16),
            key_print=self.key_print(admin_key) if kind == KIND_KEY else "",
        )

    def encode(self, s: Session) -> str:
        body: dict[str, Any] = {
            "k": s.kind,
            "u": s.user,
            "d": s.device,
            "i": s.issued_at_ms,
            "e": s.expires_at,
            "s": s.sid,
            "p": s.key_print,
        }
        payload = base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")
        return f"{payload}.{self._mac(payload)}"

    def decode(self, value: str, now: float) -> Session | None:
        """The session ``value`` states, or ``None`` if it is forged, damaged or expired."""
        payload, _, mac = value.partition(".")
        if not payload or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            s = Session(
                kind=str(body["k"]),
                user=body["u"],
                device=body["d"],
                issued_at_ms=int(body["i"]),
                expires_at=int(body["e"]),
                sid=str(body["s"]),
                key_print=str(body["p"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if s.expires_at <= now or s.kind not in (KIND_KEY, KIND_USER):
            return None
        return s

    def csrf_token(self, s: Session) -> str:
        """The token the page echoes in ``X-CSRF-Token`` on every state-changing request."""
        return hmac.new(self._key, b"csrf:" + s.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, s: Session, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf_token(s).encode())

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, b"session:" + payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
