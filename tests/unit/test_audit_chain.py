"""Unit tests for imserver/audit/chain.py: canonical encoding, sealing, chain verification.

Where a tamper is reported (``first_bad_seq``), precisely:

* any field of record k edited (seq excepted), or its stored hash: k;
* record k's seq changed or record k deleted or records k and k+1 swapped: k
  (the first seq that is not where it should be);
* record k rewritten *and resealed* consistently, or a forged record inserted
  before k with everything after renumbered: k + 1, "broken link" (the
  successor no longer points at it) — undetectable when k is the last record;
* the last record deleted: undetectable by the chain (only an anchored head
  hash shows it).

And always ``first_bad_seq == checked + 1``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.audit.chain import (
    GENESIS,
    HASHES,
    AuditRecord,
    VerifyResult,
    canonical,
    digest,
    record_hash,
    seal,
    verify_chain,
)

T0 = 1_700_000_000_000


def build(n: int, algorithms: tuple[str, ...] = ("sha256",)) -> list[AuditRecord]:
    """A valid chain of ``n`` records, cycling through ``algorithms``."""
    chain: list[AuditRecord] = []
    prev: AuditRecord | None = None
    for i in range(n):
        prev = seal(
            prev,
            T0 + i,
            f"admin{i % 3}",
            "user.disable" if i % 2 else "org.sync",
            f"user:u{i}",
            {"i": i, "why": "离职", "nested": {"b": [1, 2], "a": None}},
            algorithms[i % len(algorithms)],
        )
        chain.append(prev)
    return chain


def assert_bad(result: VerifyResult, seq: int, reason: str) -> None:
    assert (result.ok, result.first_bad_seq, result.reason) == (False, seq, reason)
    assert result.checked == seq - 1


def flip(h: str) -> str:
    """The same hex hash with its last digit changed."""
    return h[:-1] + ("0" if h[-1] != "0" else "1")


# -- digest and encoding -------------------------------------------------------


def test_digest_known_vectors() -> None:
    assert digest("sha256", b"abc") == hashlib.sha256(b"abc").hexdigest()
    # GB/T 32905-2016 example 1.
    assert digest("sm3", b"abc") == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    assert HASHES == ("sha256", "sm3")
    assert len(GENESIS) == 64 and set(GENESIS) == {"0"}


def test_digest_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="md5"):
        digest("md5", b"abc")


def test_canonical_golden_vector() -> None:
    """Pins the hashed bytes: if this fails, stored chains would stop verifying."""
    data = canonical(
        1,
        T0,
        "admin",
        "user.disable",
        "user:alice",
        {"reason": "离职", "by": ["hr", 1]},
        GENESIS,
        "sha256",
    )
    assert data == (
        b'{"action":"user.disable","actor":"admin","algorithm":"sha256","at":1700000000000,'
        b'"details":{"by":["hr",1],"reason":"\xe7\xa6\xbb\xe8\x81\x8c"},'
        b'"prev_hash":"' + GENESIS.encode() + b'","seq":1,"target":"user:alice","v":1}'
    )
    record = seal(
        None,
        T0,
        "admin",
        "user.disable",
        "user:alice",
        {"reason": "离职", "by": ["hr", 1]},
        "sha256",
    )
    assert record.hash == hashlib.sha256(data).hexdigest()
    assert record.hash == "62b93a807b0e550f6a4c31b6ccce37a82985701211204696bc40031c51c6b99c"
    nxt = seal(record, T0 + 1, "org-sync", "org.sync", "dept:42", {"added": 3, "removed": 0}, "sm3")
    assert nxt.hash == "67acbb815c60f597a7304d91154a0dddadf890083d56719de445e622f8829adf"


def test_canonical_ignores_key_order_at_every_depth() -> None:
    a = seal(None, T0, "x", "y", "z", {"b": 1, "a": {"d": [{"f": 1, "e": 2}], "c": 3}}, "sha256")
    b = seal(None, T0, "x", "y", "z", {"a": {"c": 3, "d": [{"e": 2, "f": 1}]}, "b": 1}, "sha256")
    assert a.hash == b.hash


def test_canonical_covers_algorithm() -> None:
    sha = canonical(1, T0, "a", "b", "c", {}, GENESIS, "sha256")
    assert sha != canonical(1, T0, "a", "b", "c", {}, GENESIS, "sm3")


# -- seal ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", HASHES)
def test_seal_links_records(algorithm: str) -> None:
    first = seal(None, T0, "admin", "revoke", "device:d1", {}, algorithm)
    second = seal(first, T0 + 5, "admin", "revoke", "device:d2", {"n": 2}, algorithm)
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert first.algorithm == second.algorithm == algorithm
    assert len(first.hash) == 64 and first.hash == record_hash(first)


def test_seal_normalises_and_detaches_details() -> None:
    details: dict[str, Any] = {"ids": ("a", "b"), "n": 1}
    record = seal(None, T0, "a", "b", "c", details, "sha256")
    details["n"] = 2
    assert record.details == {"ids": ["a", "b"], "n": 1}
    assert verify_chain([record]).ok


def test_seal_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown audit hash algorithm"):
        seal(None, T0, "a", "b", "c", {}, "sha1")
    with pytest.raises(TypeError, match="at must be an int"):
        seal(None, True, "a", "b", "c", {}, "sha256")
    with pytest.raises(TypeError, match="actor"):
        seal(None, T0, 1, "b", "c", {}, "sha256")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="details"):
        seal(None, T0, "a", "b", "c", [], "sha256")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seal(None, T0, "a", "b", "c", {1: "non-string key"}, "sha256")  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        seal(None, T0, "a", "b", "c", {"big": 2**70}, "sha256")


# -- verify: good chains -------------------------------------------------------


def test_empty_chain_is_ok() -> None:
    assert verify_chain([]) == VerifyResult(True, 0, None, None, GENESIS)


@pytest.mark.parametrize("algorithm", HASHES)
def test_roundtrip(algorithm: str) -> None:
    chain = build(50, (algorithm,))
    result = verify_chain(chain)
    assert result == VerifyResult(True, 50, None, None, chain[-1].hash)


def test_mixed_algorithms_and_a_switch() -> None:
    assert verify_chain(build(20, ("sha256", "sm3"))).ok
    # A deployment switching from SHA-256 to SM3 at seq 11.
    chain = build(10, ("sha256",))
    prev = chain[-1]
    for i in range(10):
        prev = seal(prev, T0 + 100 + i, "admin", "card.decide", "card:1", {"i": i}, "sm3")
        chain.append(prev)
    assert [r.algorithm for r in chain] == ["sha256"] * 10 + ["sm3"] * 10
    assert verify_chain(chain) == VerifyResult(True, 20, None, None, chain[-1].hash)


def test_verify_streams_and_stops_at_first_bad() -> None:
    chain = build(5)
    consumed: list[int] = []

    def stream() -> Iterator[AuditRecord]:
        for i, record in enumerate(chain):
            consumed.append(record.seq)
            yield dataclasses.replace(record, actor="mallory") if i == 2 else record
        raise AssertionError("read past the first bad record")

    assert_bad(verify_chain(stream()), 3, "hash mismatch")
    assert consumed == [1, 2, 3]


# -- verify: tampering ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("details", {"i": 999}),
        ("actor", "mallory"),
        ("action", "nothing.happened"),
        ("target", "user:bob"),
        ("at", T0 - 1),
    ],
)
def test_tampered_field_is_named(field: str, value: Any) -> None:
    chain = build(10)
    chain[6] = dataclasses.replace(chain[6], **{field: value})
    assert_bad(verify_chain(chain), 7, "hash mismatch")


def test_tampered_hash_is_named() -> None:
    chain = build(10)
    chain[3] = dataclasses.replace(chain[3], hash=flip(chain[3].hash))
    assert_bad(verify_chain(chain), 4, "hash mismatch")


def test_tampered_prev_hash_is_a_broken_link() -> None:
    chain = build(10)
    chain[3] = dataclasses.replace(chain[3], prev_hash=flip(chain[3].prev_hash))
    assert_bad(verify_chain(chain), 4, "broken link")
    first = build(1)
    first[0] = dataclasses.replace(first[0], prev_hash=flip(GENESIS))
    assert_bad(verify_chain(first), 1, "broken link")


def test_swapped_algorithm_label() -> None:
    chain = build(4)
    chain[1] = dataclasses.replace(chain[1], algorithm="sm3")
    assert_bad(verify_chain(chain), 2, "hash mismatch")
    chain[1] = dataclasses.replace(chain[1], algorithm="md5")
    assert_bad(verify_chain(chain), 2, "unknown algorithm")


def test_resealed_record_breaks_the_next_link() -> None:
    chain = build(10)
    chain[4] = seal(chain[3], chain[4].at, "mallory", "x", "y", {}, "sha256")
    assert_bad(verify_chain(chain), 6, "broken link")


def test_deleted_record_is_a_gap() -> None:
    chain = build(10)
    del chain[4]
    assert_bad(verify_chain(chain), 5, "missing record (gap)")
    chain = build(10)
    del chain[0]
    assert_bad(verify_chain(chain), 1, "missing record (gap)")


def test_deleted_tail_is_invisible_without_an_anchor() -> None:
    chain = build(10)
    result = verify_chain(chain[:-1])
    assert result.ok and result.checked == 9
    assert result.head_hash == chain[8].hash != chain[9].hash


def test_reordered_records() -> None:
    chain = build(10)
    chain[3], chain[4] = chain[4], chain[3]
    assert_bad(verify_chain(chain), 4, "missing record (gap)")
    chain = build(10)
    assert_bad(verify_chain([*chain[:5], chain[2], *chain[5:]]), 6, "out of order")


def test_renumbered_seq() -> None:
    chain = build(5)
    chain[2] = dataclasses.replace(chain[2], seq=2)
    assert_bad(verify_chain(chain), 3, "out of order")


def test_unencodable_details_are_a_mismatch() -> None:
    chain = build(3)
    chain[1] = dataclasses.replace(chain[1], details={"x": object()})
    assert_bad(verify_chain(chain), 2, "hash mismatch")


# -- property: one random tamper is named exactly -------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_append = st.tuples(
    st.integers(min_value=0, max_value=2**62),
    st.text(max_size=10),
    st.text(max_size=10),
    st.text(max_size=10),
    st.dictionaries(st.text(max_size=6), _json, max_size=4),
    st.sampled_from(HASHES),
)
TAMPERS = (
    "details",
    "actor",
    "action",
    "target",
    "at",
    "algorithm",
    "unknown_algorithm",
    "hash",
    "prev_hash",
    "seq_up",
    "seq_down",
    "delete",
    "reseal",
    "swap",
    "insert",
)


def _tamper(
    chain: list[AuditRecord], k: int, kind: str
) -> tuple[list[AuditRecord], tuple[int, str] | None]:
    """Apply tamper ``kind`` to record seq ``k``; return the new list and the
    expected (first_bad_seq, reason), or None when the chain cannot show it."""
    n = len(chain)
    out = list(chain)
    r = out[k - 1]
    last = k == n
    if kind in ("details", "actor", "action", "target", "at", "algorithm"):
        changes: dict[str, Any] = {
            "details": {**r.details, "__t": [r.details.get("__t")]},
            "actor": r.actor + "!",
            "action": r.action + "!",
            "target": r.target + "!",
            "at": r.at + 1,
            "algorithm": "sm3" if r.algorithm == "sha256" else "sha256",
        }
        out[k - 1] = dataclasses.replace(r, **{kind: changes[kind]})
        return out, (k, "hash mismatch")
    if kind == "unknown_algorithm":
        out[k - 1] = dataclasses.replace(r, algorithm="md5")
        return out, (k, "unknown algorithm")
    if kind == "hash":
        out[k - 1] = dataclasses.replace(r, hash=flip(r.hash))
        return out, (k, "hash mismatch")
    if kind == "prev_hash":
        out[k - 1] = dataclasses.replace(r, prev_hash=flip(r.prev_hash))
        return out, (k, "broken link")
    if kind == "seq_up":
        out[k - 1] = dataclasses.replace(r, seq=r.seq + 1)
        return out, (k, "missing record (gap)")
    if kind == "seq_down":
        out[k - 1] = dataclasses.replace(r, seq=r.seq - 1)
        return out, (k, "out of order")
    if kind == "delete":
        del out[k - 1]
        return out, None if last else (k, "missing record (gap)")
    if kind == "reseal":
        prev = out[k - 2] if k > 1 else None
        out[k - 1] = seal(prev, r.at, r.actor + "!", r.action, r.target, r.details, r.algorithm)
        return out, None if last else (k + 1, "broken link")
    if kind == "swap":
        if last:
            return out, None  # nothing to swap with: left intact
        out[k - 1], out[k] = out[k], out[k - 1]
        return out, (k, "missing record (gap)")
    if kind == "insert":
        prev = out[k - 2] if k > 1 else None
        forged = seal(prev, r.at, "mallory", "forged", r.target, {}, r.algorithm)
        renumbered = [dataclasses.replace(x, seq=x.seq + 1) for x in out[k - 1 :]]
        return [*out[: k - 1], forged, *renumbered], (k + 1, "broken link")
    raise AssertionError(kind)


@settings(max_examples=300, deadline=None)
@given(
    appends=st.lists(_append, min_size=1, max_size=25),
    data=st.data(),
    kind=st.sampled_from(TAMPERS),
)
def test_one_random_tamper_is_named_exactly(
    appends: list[tuple[int, str, str, str, dict[str, Any], str]],
    data: st.DataObject,
    kind: str,
) -> None:
    chain: list[AuditRecord] = []
    prev: AuditRecord | None = None
    for at, actor, action, target, details, algorithm in appends:
        prev = seal(prev, at, actor, action, target, details, algorithm)
        chain.append(prev)
    assert verify_chain(chain) == VerifyResult(True, len(chain), None, None, chain[-1].hash)

    k = data.draw(st.integers(min_value=1, max_value=len(chain)), label="k")
    tampered, expected = _tamper(chain, k, kind)
    result = verify_chain(tampered)
    if expected is None:
        assert result.ok
    else:
        assert_bad(result, *expected)
        good = result.checked
        assert result.head_hash == (tampered[good - 1].hash if good else GENESIS)
