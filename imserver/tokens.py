"""Signed, expiring user tokens bound to a device.

Tokens are standard JWTs (HS256) so that an identity service in any language
can mint them with an off-the-shelf library. Claims: ``sub`` (user id),
``dev`` (device id), ``typ`` = ``"user"``, ``iat``, ``exp``, ``jti``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from imserver.errors import TokenExpired, TokenInvalid
from imserver.protocol.fields import is_user_id

ALGORITHM = "HS256"
#: Clock skew forgiven on ``exp``: a token is accepted until ``exp + LEEWAY_S``,
#: and a live session lasts exactly as long (docs/protocol.md section 3.1).
LEEWAY_S = 5
#: A live session is warned (``auth.expiring``) this long before ``exp`` ...
EXPIRY_WARNING_S = 60.0
#: ... or, for tokens shorter than four minutes, this fraction of their lifetime,
#: so a short token is not warned about from the moment it is used.
EXPIRY_WARNING_FRACTION = 0.25


def expiry_warning_lead_s(lifetime_s: float) -> float:
    """Seconds before ``exp`` at which a session holding this token is warned."""
    return max(0.0, min(EXPIRY_WARNING_S, lifetime_s * EXPIRY_WARNING_FRACTION))


@dataclass(slots=True, frozen=True)
class TokenClaims:
    user: str
    device: str
    issued_at: int  # s
    expires_at: int  # s
    token_id: str
    issued_at_ms: int = 0  # precise issue time: a revocation refuses tokens issued before it


class TokenSigner:
    """Mints and verifies user tokens with one shared secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 characters")
        self._secret = secret

    def mint(self, user: str, device: str, ttl_s: int, now: float | None = None) -> str:
        if not is_user_id(user):
            raise ValueError(f"invalid user id {user!r}")
        if not is_user_id(device):
            raise ValueError(f"invalid device id {device!r}")
        moment = time.time() if now is None else now
        iat = int(moment)
        claims = {
            "ims": int(moment * 1000),  # issued-at in ms: revocations compare against it
            "sub": user,
            "dev": device,
            "typ": "user",
            "iat": iat,
            "exp": iat + ttl_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def derive_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (e.g. the dashboard's session cookies) from the shared secret.

        Every node holds the same secret, so what one node signs with it
        another verifies; a token can never pass for a ``purpose`` value.
        """
        return hmac.new(self._secret.encode(), purpose.encode(), hashlib.sha256).digest()

    def verify(self, token: str) -> TokenClaims:
        """Return the token's claims, or raise ``TokenInvalid`` / ``TokenExpired``."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "dev", "exp", "iat", "typ"]},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token has expired; get a new one") from None
        except jwt.PyJWTError as e:
            raise TokenInvalid(f"token rejected: {e}") from None
        user, device = claims.get("sub"), claims.get("dev")
        if claims.get("typ") != "user" or not is_user_id(user) or not is_user_id(device):
            raise TokenInvalid("token rejected: not a user token")
        assert isinstance(user, str) and isinstance(device, str)
        return TokenClaims(
            user=user,
            device=device,
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
            token_id=str(claims.get("jti", "")),
            issued_at_ms=int(claims.get("ims", int(claims["iat"]) * 1000)),
        )


def load_or_create_secret(configured: str, data_dir: Path) -> str:
    """The configured secret, or one generated once and kept in the data dir.

    The embedded default must work with no setup, yet the CLI's ``token``
    command and the running server must agree on the key: a file does both.
    """
    if configured:
        return configured
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    # Created 0600 from the start: the secret is never readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    tmp.replace(path)
    return secret
