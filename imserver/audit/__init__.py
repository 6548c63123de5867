"""Tamper-evident audit log of security-relevant actions.

Admin actions, org syncs, token revocations, DLP refusals and card decisions
are recorded in an append-only, hash-chained log (SHA-256 or SM3), so that an
auditor can later show — ``python -m imserver audit verify`` — that no record
was altered, removed or inserted after the fact. ``chain`` holds the pure
rules; ``sqlite_log`` stores records in the store's database.
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
from imserver.audit.sqlite_log import SCHEMA_SQL, SqliteAuditLog, create_schema, verify_database

__all__ = [
    "GENESIS",
    "HASHES",
    "SCHEMA_SQL",
    "Anchor",
    "AuditRecord",
    "SqliteAuditLog",
    "VerifyResult",
    "canonical",
    "canonical_details",
    "create_schema",
    "details_text_problem",
    "digest",
    "parse_anchor",
    "seal",
    "verify_chain",
    "verify_database",
]
