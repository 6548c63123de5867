"""Masking of sensitive values for display (``138****1234``).

Pure functions; every view that shows a field marked sensitive passes it
through :func:`mask` unless the viewer is entitled to the clear value.
"""

from __future__ import annotations

import re

#: The scope whose holders see sensitive values unmasked.
PII_READ = "pii:read"

_PHONE = re.compile(r"1\d{10}")
_ID_CARD = re.compile(r"\d{17}[\dXx]")


def mask(value: str) -> str:
    """Keep just enough to recognise a value, hide the rest.

    Mobile numbers keep 3+4 digits, ID numbers 6+4 (national conventions);
    anything else keeps its first and last quarter.
    """
    if _PHONE.fullmatch(value):
        return f"{value[:3]}****{value[-4:]}"
    if _ID_CARD.fullmatch(value):
        return f"{value[:6]}{'*' * 8}{value[-4:]}"
    n = len(value)
    if n <= 2:
        return "*" * n
    keep = max(1, n // 4)
    return value[:keep] + "*" * (n - 2 * keep) + value[-keep:]
