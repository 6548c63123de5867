"""Request signing for business systems (docs/cards.md, section 2).

Both directions use one scheme: the app signs its API calls with its shared
``secret``, and the server signs the callbacks it sends to the app with the
same secret. Keeping signing and verification here, free of any I/O, lets the
HTTP client, the callback handler and tests (which play the server) share a
single implementation, so the two directions cannot drift apart.

The signature is lowercase hex HMAC-SHA256 over the bytes
``timestamp + "\\n" + nonce + "\\n" + body``. Note what it does *not* cover:
the method, the path and the app id. Replay protection therefore rests on
the timestamp window plus a nonce cache, and transport security on TLS.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
import time
from collections.abc import Mapping

__all__ = [
    "HEADER_APP",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "NonceCache",
    "SignatureError",
    "compute_signature",
    "sign_request",
    "verify_signature",
]

HEADER_APP = "X-Imserver-App"
HEADER_TIMESTAMP = "X-Imserver-Timestamp"
HEADER_NONCE = "X-Imserver-Nonce"
HEADER_SIGNATURE = "X-Imserver-Signature"

DEFAULT_WINDOW_S = 300.0

# The documented nonce alphabet and length; checking it on both ends means a
# sloppy signer is caught in its own tests rather than by a 401 in production.
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Plain decimal seconds only, exactly as the server checks them: "1.5e9", " 17"
# or "-5" would parse as numbers but are not what the contract specifies. The
# class is ASCII on purpose: str.isdigit() and \d also accept "²" or "٣".
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
# Exactly what hexdigest() produces. Checking the shape first also keeps
# non-ASCII input away from hmac.compare_digest, which rejects it with TypeError.
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")


class SignatureError(Exception):
    """A signed request or callback failed verification.

    ``code`` is one of ``missing_header``, ``bad_signature``,
    ``signature_expired`` or ``nonce_replayed`` - the same strings the server
    answers with, so a callback endpoint can return them verbatim in a 401.
    Callers branch on ``code``, never on the message.
    """

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if message else code)

    def __reduce__(self) -> tuple[object, ...]:
        # Keep it picklable with its code (the default would pass one arg).
        return (type(self), (self.code, self.message))


def compute_signature(secret: str, timestamp: str, nonce: str, body: bytes) -> str:
    """Return the lowercase hex signature for one request.

    ``timestamp`` is taken as the exact header text, not a number, because the
    signature covers the bytes that travel - re-formatting an int could differ.
    """
    msg = f"{timestamp}\n{nonce}\n".encode() + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def sign_request(
    app_id: str,
    secret: str,
    body: bytes,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return the four ``X-Imserver-*`` headers that authenticate ``body``.

    ``body`` must be the exact bytes that will be sent (``b""`` for ``GET``):
    signing a dict and letting the HTTP library serialize it again is the
    classic way to get ``bad_signature``. A fresh random nonce is drawn for
    every call because the server refuses a nonce it has already seen, so a
    retried request must be signed again. ``now`` and ``nonce`` exist for
    tests and for reproducing a signature by hand.
    """
    ts = str(int(time.time() if now is None else now))
    if nonce is None:
        nonce = secrets.token_urlsafe(24)  # 32 chars of the nonce alphabet
    elif not _NONCE_RE.fullmatch(nonce):
        raise ValueError("nonce must be 16-64 characters of A-Z a-z 0-9 _ -")
    return {
        HEADER_APP: app_id,
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: compute_signature(secret, ts, nonce, body),
    }


class NonceCache:
    """Nonces seen inside the signature window, for replay detection.

    A nonce must be remembered exactly as long as its request could still pass
    the timestamp check, i.e. until ``timestamp + window_s``; after that the
    window check refuses a replay on its own and the entry can go. Expired
    entries are dropped on every insert, so memory is bounded by the rate of
    *authenticated* requests times the window (only requests with a valid
    signature reach the cache, so an outsider cannot fill it). Use the same
    ``window_s`` as the verifier, or replays become possible in the gap.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = float(window_s)
        self._expiry: dict[str, float] = {}
        # Min-heap of (expiry, nonce): timestamps arrive out of order (clock
        # skew is allowed in both directions), so insertion order is useless.
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._expiry

    def check_and_add(self, nonce: str, ts: float, *, now: float | None = None) -> bool:
        """Record ``nonce`` (signed at ``ts``); return False if it is a replay.

        Check and insert are one step so two concurrent deliveries of the same
        request cannot both be accepted.
        """
        now = time.time() if now is None else now
        self._prune(now)
        if nonce in self._expiry:
            return False
        expiry = float(ts) + self.window_s
        self._expiry[nonce] = expiry
        heapq.heappush(self._heap, (expiry, nonce))
        return True

    def _prune(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] < now:
            _, old = heapq.heappop(heap)
            expiry.pop(old, None)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works for plain dicts.

    aiohttp hands over a case-insensitive multidict, but tests and other
    frameworks pass ordinary dicts, and HTTP header names are case-insensitive.
    """
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, val in headers.items():
        if key.lower() == lower:
            return val
    return None


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    now: float | None = None,
    seen_nonces: NonceCache | None = None,
    previous_secret: str | None = None,
) -> None:
    """Check that ``body`` with ``headers`` was signed with ``secret``; raise if not.

    ``previous_secret``, if given, is accepted too: set it while the app's
    secret is being rotated, since the server signs callbacks with the new
    secret from the moment of the rotation (docs/admin.md "Apps").

    Raises :class:`SignatureError` with code ``missing_header`` (timestamp,
    nonce or signature absent), ``bad_signature`` (malformed header or wrong
    signature), ``signature_expired`` (timestamp more than ``window_s`` away
    from ``now``) or ``nonce_replayed`` (``seen_nonces`` already holds it).

    The signature is checked before the clock and the nonce cache, so that
    only authentic requests are ever recorded as seen. ``X-Imserver-App`` is
    not required: it is not covered by the signature, and the caller already
    chose ``secret``. Pass a :class:`NonceCache` to reject replays inside the
    window; without one, only the timestamp limits replays.
    """
    ts_text = _header(headers, HEADER_TIMESTAMP)
    nonce = _header(headers, HEADER_NONCE)
    signature = _header(headers, HEADER_SIGNATURE)
    missing = [
        name
        for name, val in (
            (HEADER_TIMESTAMP, ts_text),
            (HEADER_NONCE, nonce),
            (HEADER_SIGNATURE, signature),
        )
        if not val
    ]
    if missing or ts_text is None or nonce is None or signature is None:
        raise SignatureError("missing_header", "missing " + ", ".join(missing))
    if not _TIMESTAMP_RE.fullmatch(ts_text):
        raise SignatureError("bad_signature", "timestamp is not integer Unix seconds")
    if not _NONCE_RE.fullmatch(nonce):
        raise SignatureError("bad_signature", "nonce is not 16-64 of A-Z a-z 0-9 _ -")
    if not _SIGNATURE_RE.fullmatch(signature):
        raise SignatureError("bad_signature", "signature is not 64 lowercase hex digits")
    candidates = [secret] if previous_secret is None else [secret, previous_secret]
    # Every candidate is computed, so the timing does not tell which one matched.
    matches = [
        hmac.compare_digest(compute_signature(c, ts_text, nonce, body), signature)
        for c in candidates
    ]
    if not any(matches):
        raise SignatureError("bad_signature", "signature does not match")
    ts = int(ts_text)
    now = time.time() if now is None else now
    if abs(now - ts) > window_s:
        raise SignatureError("signature_expired", f"timestamp is more than {window_s:g} s off")
    if seen_nonces is not None and not seen_nonces.check_and_add(nonce, ts, now=now):
        raise SignatureError("nonce_replayed", "nonce already used inside the window")
