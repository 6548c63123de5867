"""The dashboard's pure parts: the signed session cookie and the latency percentiles."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from imserver.dashboard.live import NodeSampler, bucket_delta, quantile
from imserver.dashboard.session import KIND_KEY, KIND_USER, SESSION_TTL_S, SessionCodec

CODEC = SessionCodec(b"k" * 32)


def test_a_session_round_trips_and_a_forgery_does_not() -> None:
    s = CODEC.new(KIND_USER, 1000.0, user="nc-mayor", device="d1", issued_at_ms=999_000)
    assert CODEC.decode(CODEC.encode(s), 1001.0) == s
    payload, _, mac = CODEC.encode(s).partition(".")
    forged = CODEC.new(KIND_KEY, 1000.0, admin_key="x")
    assert CODEC.decode(CODEC.encode(forged).split(".")[0] + "." + mac, 1001.0) is None
    assert CODEC.decode(payload + ".", 1001.0) is None
    assert CODEC.decode("garbage", 1001.0) is None
    assert SessionCodec(b"other" * 8).decode(CODEC.encode(s), 1001.0) is None  # another key


def test_a_session_expires() -> None:
    s = CODEC.new(KIND_KEY, 1000.0, admin_key="key")
    assert CODEC.decode(CODEC.encode(s), 1000.0 + SESSION_TTL_S - 1) is not None
    assert CODEC.decode(CODEC.encode(s), 1000.0 + SESSION_TTL_S) is None


def test_key_print_changes_with_the_key_and_csrf_with_the_session() -> None:
    assert CODEC.key_print("a") != CODEC.key_print("b")
    one, two = CODEC.new(KIND_KEY, 0, admin_key="a"), CODEC.new(KIND_KEY, 0, admin_key="a")
    assert CODEC.csrf_token(one) != CODEC.csrf_token(two)
    assert CODEC.csrf_ok(one, CODEC.csrf_token(one))
    assert not CODEC.csrf_ok(one, CODEC.csrf_token(two)) and not CODEC.csrf_ok(one, "")


def test_quantiles_interpolate_inside_a_bucket() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == 0.01
    assert abs((quantile(0.7, buckets) or 0) - 0.055) < 1e-9
    assert quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(1.0, 0.0), (float("inf"), 10.0)]) == 1.0  # above the top bucket
    assert bucket_delta([(1.0, 5.0), (2.0, 9.0)], [(1.0, 2.0), (2.0, 3.0)]) == [
        (1.0, 3.0),
        (2.0, 6.0),
    ]


def test_sampler_rates_and_window_percentiles() -> None:
    r = CollectorRegistry()
    messages = Counter("imserver_messages_stored", "m", ["kind"], registry=r)
    ack = Histogram("imserver_send_ack_seconds", "a", buckets=(0.001, 0.01, 0.1), registry=r)
    sampler = NodeSampler(r, lambda: 3, lambda: 2, node="n1")
    sampler.sample(now=100.0)
    messages.labels("text").inc(10)
    messages.labels("card").inc(10)
    for _ in range(97):
        ack.observe(0.0005)
    for _ in range(3):
        ack.observe(0.05)
    sampler.sample(now=102.0)
    snap = sampler.snapshot()
    assert (snap["node"], snap["connections"], snap["users"]) == ("n1", 3, 2)
    assert snap["rates"]["messages"] == 10.0  # 20 in 2 s
    assert snap["totals"]["messages"] == 20.0
    assert snap["latency_ms"]["send_ack"]["p50"] is not None
    assert snap["latency_ms"]["send_ack"]["p50"] < 1.0  # ms: inside the first bucket
    assert 10.0 < snap["latency_ms"]["send_ack"]["p99"] <= 100.0  # the slow three
    assert snap["latency_ms"]["callback_post"] == {"p50": None, "p95": None, "p99": None}
    assert snap["series"]["messages"] == [10.0] and snap["series"]["connections"] == [3.0]
