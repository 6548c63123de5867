"""Tamper-evident audit log of security-relevant actions.

Admin actions, org syncs, token revocations, DLP refusals and card decisions
are recorded in an append-only, hash-chained log (SHA-256 or SM3), so that an
auditor can later show — ``python -m imserver audit verify`` — that no record
was altered, removed or inserted after the fact. ``chain`` holds the pure
rules; each store backend keeps the records in its own database
(``imserver/store/sqlite/audit.py``, ``imserver/store/postgres/audit.py``).
"""

from imserver.audit.chain import (
    GENESIS,
    HASHES,
    Anchor,
    AuditRecord,
    VerifyResult,
    canonical,
    canonical_details,
    details_text_problem,
    digest,
    parse_anchor,
    seal,
    verify_chain,
)

__all__ = [
    "GENESIS",
    "HASHES",
    "Anchor",
    "AuditRecord",
    "VerifyResult",
    "canonical",
    "canonical_details",
    "details_text_problem",
    "digest",
    "parse_anchor",
    "seal",
    "verify_chain",
]
