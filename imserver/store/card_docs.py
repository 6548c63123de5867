"""Field sealing of card documents on their way into and out of any backend's card store.

Why shared: which fields are sealed, and that a record handed to a service is
always opened, must not depend on the backend; each card store mixes this in
and only reads and writes rows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from imserver.store.base import DocProtector
from imserver.store.records import CardRecord
from imserver.store.rows import Row, card_from_row


class CardDocSealing:
    """``_seal_doc`` before a write, ``_card_record`` (opened) after a read."""

    #: Seals sensitive card fields at rest (``FieldProtector``); None: stored clear.
    doc_protector: DocProtector | None = None

    def _seal_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        p = self.doc_protector
        return doc if p is None else p.seal_doc(card_id, doc)

    def _card_record(self, row: Row) -> CardRecord:
        card = card_from_row(row)
        p = self.doc_protector
        return card if p is None else replace(card, doc=p.open_doc(card.id, card.doc))
