"""The SDK's verifier is as strict as the server's (issue #12 items 2 and 9).

A callback endpoint built on ``verify_signature`` must refuse what the server
refuses: timestamps that only look like digits to ``str.isdigit`` (``²``,
``٣``), negative or over-long ones, non-ASCII nonces and signatures, each
with ``bad_signature`` rather than a ``ValueError``/``TypeError`` escaping;
and a replay stays refused until the request's own ``timestamp + window``.
"""

from __future__ import annotations

import pytest

from imserver_sdk import NonceCache, SignatureError, sign_request, verify_signature
from imserver_sdk.signing import compute_signature

SECRET = "a-long-random-string-at-least-32-chars"
T0 = 1_764_400_000.0
NONCE = "AbCdEfGhIjKlMnOp_-12"
BODY = b'{"type":"card.action"}'


def headers(ts: str, nonce: str = NONCE, signature: str | None = None) -> dict[str, str]:
    return {
        "X-Imserver-Timestamp": ts,
        "X-Imserver-Nonce": nonce,
        "X-Imserver-Signature": signature or compute_signature(SECRET, ts, nonce, BODY),
    }


@pytest.mark.parametrize(
    "signed",
    [
        headers("²"),
        headers("٣"),
        headers("1" * 5000),
        headers("1" * 16),
        headers("-5"),
        headers(str(int(T0)) + "\n"),
        headers(str(int(T0)), nonce="ÄÖÜäöüßÄÖÜäöüßÄÖ"),
        headers(str(int(T0)), signature="é" * 64),
    ],
)
def test_malformed_headers_are_bad_signature(signed: dict[str, str]) -> None:
    with pytest.raises(SignatureError) as info:
        verify_signature(SECRET, signed, BODY, now=T0, window_s=10)
    assert info.value.code == "bad_signature"


def test_replay_is_refused_until_the_requests_own_timestamp_plus_window() -> None:
    seen = NonceCache(window_s=10)
    signed = sign_request("oa", SECRET, BODY, now=T0 + 9, nonce=NONCE)
    verify_signature(SECRET, signed, BODY, now=T0, window_s=10, seen_nonces=seen)
    with pytest.raises(SignatureError) as info:  # 11.5 s after receipt, before ts + window
        verify_signature(SECRET, signed, BODY, now=T0 + 11.5, window_s=10, seen_nonces=seen)
    assert info.value.code == "nonce_replayed"
    with pytest.raises(SignatureError) as info:
        verify_signature(SECRET, signed, BODY, now=T0 + 19.5, window_s=10, seen_nonces=seen)
    assert info.value.code == "signature_expired"


def test_timestamps_too_far_ahead_are_expired() -> None:
    ahead = sign_request("oa", SECRET, BODY, now=T0 + 11, nonce=NONCE)
    with pytest.raises(SignatureError) as info:
        verify_signature(SECRET, ahead, BODY, now=T0, window_s=10)
    assert info.value.code == "signature_expired"
