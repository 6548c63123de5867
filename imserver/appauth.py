"""Signed requests between the server and business systems (apps).

Both directions use one scheme (docs/cards.md section 2): HMAC-SHA256 with
the app's secret over ``timestamp + "\\n" + nonce + "\\n" + body``, a replay
window on the timestamp (either way), and a nonce remembered until the
request's own ``timestamp + window`` (``imserver.nonces``). While a secret
rotation's overlap runs, an app's requests verify with its old secret too;
the server's own callbacks are always signed with the current one.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from imserver.errors import BadSignature, NonceReplayed, SignatureExpired, UnknownApp
from imserver.nonces import NonceStore
from imserver.store.records import AppRecord

H_APP = "X-Imserver-App"
H_TIMESTAMP = "X-Imserver-Timestamp"
H_NONCE = "X-Imserver-Nonce"
H_SIGNATURE = "X-Imserver-Signature"

# ASCII classes written out (never \d or str.isdigit, which accept other scripts'
# digits); always used with fullmatch, so a trailing newline is refused too.
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
SIGNATURE_RE = re.compile(r"[0-9A-Fa-f]{64}")


def signature(secret: str, timestamp: str, nonce: str, body: bytes) -> str:
    msg = f"{timestamp}\n{nonce}\n".encode() + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def sign_headers(app_id: str, secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(24)
    return {
        H_APP: app_id,
        H_TIMESTAMP: ts,
        H_NONCE: nonce,
        H_SIGNATURE: signature(secret, ts, nonce, body),
    }


async def verify_app_request(
    headers: Mapping[str, str],
    body: bytes,
    get_app: Callable[[str], Awaitable[AppRecord | None]],
    nonces: NonceStore,
    window_s: float,
    now: float | None = None,
) -> AppRecord:
    """The calling app, or the 401 error saying why the request is refused.

    Order matters: only a request with a valid signature and timestamp reaches
    the nonce store, so outsiders cannot fill it.
    """
    now = time.time() if now is None else now
    app_id = headers.get(H_APP, "")
    app = await get_app(app_id) if app_id else None
    if app is None:
        raise UnknownApp(f"unknown app {app_id[:32]!r}; send {H_APP}")
    ts, nonce, sig = _signed_headers(headers)
    # During a rotation's overlap the secret before it verifies too (both are
    # always computed, so the timing does not tell which one matched).
    matches = [
        hmac.compare_digest(sig.lower(), signature(secret, ts, nonce, body))
        for secret in app.secrets_valid_at(int(now * 1000))
    ]
    if not any(matches):
        raise BadSignature("signature does not match")
    signed_at = int(ts)
    if signed_at - now > window_s:
        raise SignatureExpired(
            f"timestamp is more than {window_s:g} s ahead of the server's clock",
            field=H_TIMESTAMP,
        )
    if now - signed_at > window_s:
        raise SignatureExpired(
            f"timestamp is more than {window_s:g} s behind the server's clock",
            field=H_TIMESTAMP,
        )
    if not await nonces.remember(app.app_id, nonce, nonce_expiry_ms(signed_at, window_s)):
        raise NonceReplayed("this nonce was already used", field=H_NONCE)
    return app


def nonce_expiry_ms(signed_at: int, window_s: float) -> int:
    """When a request signed at ``signed_at`` stops passing the timestamp check.

    Its nonce must be held until then (not for a window from receipt: a
    request signed ahead of the server's clock stays valid longer).
    """
    return math.ceil((signed_at + window_s) * 1000)


def _signed_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """Timestamp, nonce and signature, each checked for its exact ASCII shape.

    ``str.isdigit`` would accept "²" or "٣" (which ``int`` then rejects), and a
    non-ASCII signature would make ``hmac.compare_digest`` raise: both were 500s.
    """
    ts, nonce, sig = (
        headers.get(H_TIMESTAMP, ""),
        headers.get(H_NONCE, ""),
        headers.get(H_SIGNATURE, ""),
    )
    if TIMESTAMP_RE.fullmatch(ts) is None:
        raise BadSignature(
            f"{H_TIMESTAMP} must be Unix seconds: 1-15 ASCII digits", field=H_TIMESTAMP
        )
    if NONCE_RE.fullmatch(nonce) is None:
        raise BadSignature(f"{H_NONCE} must be 16-64 of A-Z a-z 0-9 _ -", field=H_NONCE)
    if SIGNATURE_RE.fullmatch(sig) is None:
        raise BadSignature(
            f"{H_SIGNATURE} must be the 64 hex digits of HMAC-SHA256", field=H_SIGNATURE
        )
    return ts, nonce, sig
