"""The audit log's hash chain: canonical record encoding, sealing and verification.

Pure (no I/O) so the rules that make the log tamper-evident live in one place
and can be tested exhaustively; storage (each backend's ``audit.py``) only persists what
:func:`seal` produced and feeds rows back to :func:`verify_chain`.

Each record's ``hash`` covers its own fields *and* the previous record's hash,
so changing, inserting, deleting or reordering any record breaks either that
record's hash or the link from its successor. What a chain alone cannot show
is the loss of its *tail* (the last records deleted, or the last record
rewritten and resealed): to catch that, note the head
(``python -m imserver audit head`` prints ``SEQ:HASH``) somewhere the
database's owner cannot rewrite — a printed report, another system's log —
and pass it back as an :class:`Anchor` (``audit verify --head SEQ:HASH``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives import hashes

HASHES: Final = ("sha256", "sm3")
"""Supported digest algorithms. SM3 (GB/T 32905) is what 密评 expects of
government systems; SHA-256 is the default elsewhere. Both give 32 bytes, so
every hash — and :data:`GENESIS` — is 64 hex digits whichever is in use."""

GENESIS: Final = "0" * 64
"""``prev_hash`` of record 1: there is no previous record to point at."""

FORMAT_VERSION: Final = 1
"""Part of every canonical encoding, so a future change of encoding can be
introduced (as a new version) without old records ever verifying differently."""

REASON_HASH: Final = "hash mismatch"
REASON_LINK: Final = "broken link"
REASON_GAP: Final = "missing record (gap)"
REASON_ORDER: Final = "out of order"
REASON_ALGORITHM: Final = "unknown algorithm"
REASON_DUPLICATE_KEY: Final = "duplicate key in details"
REASON_NOT_CANONICAL: Final = "details not in canonical form"
REASON_ANCHOR_MISSING: Final = "anchored record missing (tail truncated)"
REASON_ANCHOR_MISMATCH: Final = "differs from the anchored head (rewritten)"

RECORD_COLUMNS: Final = "seq, at, actor, action, target, details, prev_hash, hash, algorithm"
"""The stored fields of a record in row order: what :func:`record_row` gives and
:func:`record_from_row` takes, in every backend's ``audit_log`` table."""

APPEND_ONLY: Final = "audit_log is append-only"
"""How every backend's triggers begin the message refusing an edit of the log."""


def require_known_algorithm(algorithm: str) -> None:
    """Raise ``ValueError`` unless ``algorithm`` is one of :data:`HASHES`."""
    if algorithm not in HASHES:
        raise ValueError(f"unknown audit hash algorithm {algorithm!r}; expected one of {HASHES}")


def _hash_algorithm(algorithm: str) -> hashes.HashAlgorithm:
    if algorithm == "sha256":
        return hashes.SHA256()
    if algorithm == "sm3":
        return hashes.SM3()
    raise ValueError(f"unknown audit hash algorithm {algorithm!r}; expected one of {HASHES}")


def digest(algorithm: str, data: bytes) -> str:
    """Hex digest of ``data`` with ``algorithm`` (one of :data:`HASHES`).

    Raises ``ValueError`` for any other name, so a typo in configuration fails
    loudly at the first append instead of producing an unverifiable chain.
    """
    h = hashes.Hash(_hash_algorithm(algorithm))
    h.update(data)
    return h.finalize().hex()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One sealed entry of the audit log.

    ``details`` holds the JSON form of what was logged (see :func:`seal`), so a
    record read back from storage compares equal to the one that was sealed.
    ``details_text`` is the stored text ``details`` was parsed from (``None``
    for a record not read from storage); :func:`verify_chain` requires it to
    be exactly :func:`canonical_details` of a duplicate-free object, because a
    parser keeps only one of two equal keys and the hash covers only that one.
    """

    seq: int
    at: int  # milliseconds since the epoch
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
    algorithm: str
    details_text: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Anchor:
    """A head noted outside the database (``audit head``): record ``seq`` had ``hash``.

    The chain alone cannot show that its last records were removed, or that
    the tail was rewritten and resealed; a record that must exist with a
    known hash can.
    """

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def parse_anchor(text: str) -> Anchor:
    """``"SEQ:HASH"`` as printed by ``audit head``; ``ValueError`` saying why if not."""
    seq_text, sep, hash_text = text.strip().partition(":")
    hash_text = hash_text.lower()
    if not sep or not seq_text.isdigit():
        raise ValueError(f"expected SEQ:HASH as printed by `audit head`, got {text!r}")
    if len(hash_text) != len(GENESIS) or any(c not in "0123456789abcdef" for c in hash_text):
        raise ValueError(f"the hash must be {len(GENESIS)} hex digits, got {hash_text!r}")
    seq = int(seq_text)
    if seq == 0 and hash_text != GENESIS:
        raise ValueError("the head of an empty chain (seq 0) is the all-zero hash")
    return Anchor(seq, hash_text)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :func:`verify_chain`.

    On failure ``checked`` records (seq 1..checked) were verified good and
    ``first_bad_seq`` is always ``checked + 1``: the first position at which the
    chain can no longer be trusted. ``head_hash`` is the hash of the last good
    record (:data:`GENESIS` for an empty chain) — the value to anchor
    externally to detect truncation of the tail.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str | None
    head_hash: str = GENESIS


def canonical(
    seq: int,
    at: int,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
    prev_hash: str,
    algorithm: str,
) -> bytes:
    """The exact bytes hashed for a record.

    The encoding must be deterministic: a record is re-hashed at verification
    time — possibly years later, by another process, after a round trip
    through the database — and any difference in bytes (dict key order,
    whitespace, number formatting) would look exactly like tampering. So:
    compact JSON (orjson), every object's keys sorted at every depth
    (``OPT_SORT_KEYS``), UTF-8, plus :data:`FORMAT_VERSION`. The algorithm is
    inside the hashed bytes, so a record's algorithm label cannot be swapped
    without breaking its hash. Non-string dict keys and values JSON cannot
    carry (integers beyond 64 bits, arbitrary objects) raise ``TypeError``
    rather than being silently coerced.

    A golden-vector test pins these bytes: if an orjson upgrade ever changed
    them, that test fails before any stored chain stops verifying.
    """
    return orjson.dumps(
        {
            "v": FORMAT_VERSION,
            "seq": seq,
            "at": at,
            "actor": actor,
            "action": action,
            "target": target,
            "details": details,
            "prev_hash": prev_hash,
            "algorithm": algorithm,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def canonical_details(details: dict[str, Any]) -> str:
    """The one text form of ``details``: what storage keeps and what verification expects.

    Compact orjson with keys sorted at every depth — the same encoding the
    hash uses inside :func:`canonical` — so the stored text is exactly the
    hashed object, and any other spelling of it stands out.
    """
    return orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    unique = dict(pairs)
    if len(unique) != len(pairs):
        raise _DuplicateKey
    return unique


def details_text_problem(text: str) -> str | None:
    """Why a stored details text cannot be trusted, or ``None`` if it is canonical.

    ``{"a": 1, "a": 2}`` parses (keeping one value) and may well match the
    hash, yet a reader of the raw row sees something else: refuse duplicate
    keys at every depth. Any text that is not the canonical spelling of what
    it parses to — reordered keys, spaces, ``NaN`` — was not stored by any
    backend's ``append_in`` (which stores :func:`record_row`) either.
    Records written by earlier releases pass: they were stored canonically.
    """
    try:
        parsed = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey:
        return REASON_DUPLICATE_KEY
    except (ValueError, RecursionError):
        return REASON_NOT_CANONICAL
    if not isinstance(parsed, dict):
        return REASON_NOT_CANONICAL
    try:
        spelled = canonical_details(parsed)
    except TypeError:  # e.g. an integer beyond 64 bits: seal() could not have stored it
        return REASON_NOT_CANONICAL
    return None if spelled == text else REASON_NOT_CANONICAL


def record_hash(record: AuditRecord) -> str:
    """Recompute ``record``'s hash from its fields (ignores ``record.hash``)."""
    return digest(
        record.algorithm,
        canonical(
            record.seq,
            record.at,
            record.actor,
            record.action,
            record.target,
            record.details,
            record.prev_hash,
            record.algorithm,
        ),
    )


def seal(
    prev: AuditRecord | None,
    at: int,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
    algorithm: str,
) -> AuditRecord:
    """The record that follows ``prev`` (``None``: the first record).

    ``details`` is normalised through a JSON round trip first: the sealed
    record then holds exactly what storage will hand back (tuples become
    lists, NaN becomes null, …) and is detached from the caller's dict, which
    the caller may go on mutating.
    """
    require_known_algorithm(algorithm)
    if type(at) is not int:  # bool is an int but would encode as true/false
        raise TypeError(f"at must be an int (milliseconds), not {type(at).__name__}")
    for name, value in (("actor", actor), ("action", action), ("target", target)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not isinstance(details, dict):
        raise TypeError(f"details must be a dict, not {type(details).__name__}")
    plain: dict[str, Any] = orjson.loads(orjson.dumps(details, option=orjson.OPT_SORT_KEYS))
    seq = 1 if prev is None else prev.seq + 1
    prev_hash = GENESIS if prev is None else prev.hash
    h = digest(algorithm, canonical(seq, at, actor, action, target, plain, prev_hash, algorithm))
    return AuditRecord(seq, at, actor, action, target, plain, prev_hash, h, algorithm)


def verify_chain(records: Iterable[AuditRecord], anchor: Anchor | None = None) -> VerifyResult:
    """Check ``records`` (in seq order) form an intact chain starting at seq 1.

    Streams: only the previous record is kept, so a database cursor over
    millions of rows verifies in constant memory. For each record, in order:

    1. ``seq`` must be the previous seq + 1 (1 for the first record). A larger
       seq means records are missing — "missing record (gap)", naming the
       first missing seq; a smaller one (duplicate, rewind) is "out of order".
    2. Its algorithm must be one of :data:`HASHES` ("unknown algorithm").
    3. ``prev_hash`` must equal the previous record's ``hash`` (:data:`GENESIS`
       for seq 1) — "broken link".
    4. Its ``hash`` must equal the recomputed hash — "hash mismatch".
    5. Its stored details text, when known, must be canonical and free of
       duplicate keys (:func:`details_text_problem`): the hash may match
       what a parser made of a doctored text, which is what this catches.
    6. With an ``anchor``: the record at ``anchor.seq`` must have
       ``anchor.hash`` ("differs from the anchored head", reported at that
       seq), and must exist ("anchored record missing (tail truncated)",
       reported at the first missing seq).

    Consequences (tested): editing any field of record *k* — or its stored
    hash — is reported at *k*; rewriting record *k* and resealing it
    consistently is reported at *k + 1* as a broken link (undetectable if *k*
    is the last record — unless an anchor at or after *k* is given: anchor
    :attr:`VerifyResult.head_hash` for that). The algorithm may differ from
    record to record: each states its own, so a deployment can switch from
    SHA-256 to SM3 without rewriting history.
    """
    checked = 0
    head = GENESIS

    def bad(reason: str) -> VerifyResult:
        return VerifyResult(False, checked, checked + 1, reason, head)

    for record in records:
        expected = checked + 1
        if record.seq > expected:
            return bad(REASON_GAP)
        if record.seq < expected:
            return bad(REASON_ORDER)
        if record.algorithm not in HASHES:
            return bad(REASON_ALGORITHM)
        if record.prev_hash != head:
            return bad(REASON_LINK)
        try:
            recomputed = record_hash(record)
        except TypeError:  # unencodable fields: seal() could never have produced them
            return bad(REASON_HASH)
        if recomputed != record.hash:
            return bad(REASON_HASH)
        if record.details_text is not None:
            problem = details_text_problem(record.details_text)
            if problem is not None:
                return bad(problem)
        if anchor is not None and record.seq == anchor.seq and record.hash != anchor.hash:
            return bad(REASON_ANCHOR_MISMATCH)
        checked = expected
        head = record.hash
    if anchor is not None and anchor.seq > checked:
        return bad(REASON_ANCHOR_MISSING)
    return VerifyResult(True, checked, None, None, head)


def record_row(record: AuditRecord) -> tuple[Any, ...]:
    """The values stored for ``record``, in :data:`RECORD_COLUMNS` order (details canonical)."""
    return (
        record.seq,
        record.at,
        record.actor,
        record.action,
        record.target,
        canonical_details(record.details),
        record.prev_hash,
        record.hash,
        record.algorithm,
    )


def record_from_row(row: Iterable[Any]) -> AuditRecord:
    """The record a stored row (in :data:`RECORD_COLUMNS` order) holds, whatever was done to it.

    Never raises for doctored details: only an edit outside the store can put
    non-JSON there, and it must surface as a record that cannot match its
    hash rather than crash verification. The stored text goes along
    (``details_text``) so :func:`verify_chain` can check it is the canonical
    spelling, which a parsed dict can no longer show (duplicate keys vanish).
    """
    seq, at, actor, action, target, details, prev_hash, h, algorithm = row
    try:
        parsed = orjson.loads(details)
    except (orjson.JSONDecodeError, TypeError):
        parsed = {"_unparseable_details": repr(details)}
    text = details if isinstance(details, str) else repr(details)
    return AuditRecord(seq, at, actor, action, target, parsed, prev_hash, h, algorithm, text)


def verify_rows(rows: Iterable[Iterable[Any]], anchor: Anchor | None = None) -> VerifyResult:
    """:func:`verify_chain` over stored rows in seq order, streaming as it does."""
    return verify_chain((record_from_row(row) for row in rows), anchor)
