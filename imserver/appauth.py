"""Signed requests between the server and business systems (apps).

Both directions use one scheme (docs/cards.md section 2): HMAC-SHA256 with
the app's secret over ``timestamp + "\\n" + nonce + "\\n" + body``, a replay
window on the timestamp, and a nonce remembered for that window.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

from imserver.errors import BadSignature, NonceReplayed, SignatureExpired, UnknownApp
from imserver.store.records import AppRecord

H_APP = "X-Imserver-App"
H_TIMESTAMP = "X-Imserver-Timestamp"
H_NONCE = "X-Imserver-Nonce"
H_SIGNATURE = "X-Imserver-Signature"

NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


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


class NonceCache:
    """Nonces seen inside the replay window, per app; bounded by the window.

    One node's memory: with several nodes a replay could land on another node
    inside the window. A shared cache (Redis) belongs with the cluster setup.
    """

    def __init__(self, window_s: float, max_entries: int = 1_000_000) -> None:
        self._window = window_s
        self._max = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def check_and_add(self, app_id: str, nonce: str, now: float) -> bool:
        """True if new (and now remembered); False if seen inside the window."""
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if now - at <= self._window and len(self._seen) < self._max:
                break
            del self._seen[key]
        key = (app_id, nonce)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


async def verify_app_request(
    headers: Mapping[str, str],
    body: bytes,
    get_app: Callable[[str], Awaitable[AppRecord | None]],
    nonces: NonceCache,
    window_s: float,
    now: float | None = None,
) -> AppRecord:
    """The calling app, or the 401 error saying why the request is refused."""
    now = time.time() if now is None else now
    app_id = headers.get(H_APP, "")
    app = await get_app(app_id) if app_id else None
    if app is None:
        raise UnknownApp(f"unknown app {app_id[:32]!r}; send {H_APP}")
    ts, nonce, sig = (
        headers.get(H_TIMESTAMP, ""),
        headers.get(H_NONCE, ""),
        headers.get(H_SIGNATURE, ""),
    )
    if not ts.isdigit() or NONCE_RE.fullmatch(nonce) is None or not sig:
        raise BadSignature(
            f"send {H_TIMESTAMP} (seconds), {H_NONCE} (16-64 chars) and {H_SIGNATURE}"
        )
    if not hmac.compare_digest(sig.lower(), signature(app.secret, ts, nonce, body)):
        raise BadSignature("signature does not match")
    if abs(now - int(ts)) > window_s:
        raise SignatureExpired(f"timestamp is more than {int(window_s)} s from the server's clock")
    if not nonces.check_and_add(app.app_id, nonce, now):
        raise NonceReplayed("this nonce was already used")
    return app
