"""ConnectionLimiter bookkeeping and the closing response (imserver/connection_limits.py)."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from imserver.connection_limits import ConnectionLimiter, closing_response
from imserver.errors import RequestTimeout, TooManyConnections


def test_per_address_cap_refuses_only_that_address() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=2)
    assert limiter.admit("10.0.0.1") is None
    assert limiter.admit("10.0.0.1") is None
    refusal = limiter.admit("10.0.0.1")
    assert isinstance(refusal, TooManyConnections) and "address" in refusal.message
    assert limiter.admit("10.0.0.2") is None
    assert (limiter.total, limiter.held_by("10.0.0.1")) == (3, 2)  # the refusal counted nothing


def test_total_cap_and_release() -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_ip=0)
    assert limiter.admit("a") is None and limiter.admit("b") is None
    assert isinstance(limiter.admit("c"), TooManyConnections)
    limiter.release("a")
    assert limiter.held_by("a") == 0 and limiter.admit("c") is None


def test_zero_means_no_cap() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=0)
    assert all(limiter.admit("a") is None for _ in range(10_000))


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=200))
def test_counts_never_drift(ops: list[tuple[bool, str]]) -> None:
    """Admit/release in any order: the counts equal what is admitted and not released."""
    limiter = ConnectionLimiter(max_total=5, max_per_ip=3)
    held: list[str] = []
    for connect, ip in ops:
        if connect:
            if limiter.admit(ip) is None:
                held.append(ip)
        elif ip in held:
            held.remove(ip)
            limiter.release(ip)
        assert limiter.total == len(held) <= 5
        assert all(limiter.held_by(x) == held.count(x) <= 3 for x in "abc")


def test_closing_response_is_a_complete_json_http_response() -> None:
    raw = closing_response(TooManyConnections("busy"))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "Connection: close" in lines and "Retry-After: 1" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert orjson.loads(body) == {"error": {"code": "too_many_connections", "message": "busy"}}
    timeout = closing_response(RequestTimeout("slow"))
    assert timeout.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Retry-After" not in timeout
