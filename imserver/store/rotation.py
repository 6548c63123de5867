"""Key rotation's batches, for every backend: which stored values a batch re-seals. Pure.

``python -m imserver keys rotate`` re-encrypts sealed values with the active
key in batches, each its own write job, so a running server keeps serving;
values already under the active key are left alone, so the command can be
interrupted and run again. Each backend only reads a batch of ``(key, stored
JSON)`` rows in key order and writes back what :func:`rotate_batch` returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from imserver.store.rows import Row, load_json

BATCH: Final = 500
"""Rows read (and at most rewritten) per write job."""


def rotate_batch(
    rows: Sequence[Row], rotate: Callable[[str, Any], Any | None]
) -> tuple[list[tuple[str, Any]], str | None]:
    """``(key, new value)`` for each row ``rotate`` re-sealed, and the key to resume after
    (``None``: this was the last batch)."""
    keyed = [tuple(row) for row in rows]
    changed = [
        (key, new)
        for key, new in ((key, rotate(key, load_json(raw))) for key, raw in keyed)
        if new is not None
    ]
    return changed, (keyed[-1][0] if len(keyed) == BATCH else None)


Batch = Callable[[str], Awaitable[tuple[str | None, int]]]
"""Runs one batch after a key as a write job: (the key to resume after, values re-sealed)."""


async def rotate_all(batch: Batch) -> int:
    """Run ``batch`` from the first key until it reports the last batch; values re-sealed."""
    after = ""
    total = 0
    while True:
        last, rewritten = await batch(after)
        total += rewritten
        if last is None:
            return total
        after = last
