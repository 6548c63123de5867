"""The store the card services are written against.

One ``Protocol`` joining the core store with the parts the cards need
(cards, deadlines, the directory, templates), so each card module takes one
store in its constructor and both backends satisfy it.
"""

from __future__ import annotations

from typing import Protocol

from imserver.services.directory import DirectoryStore
from imserver.store.base import CardStore, DeadlineStore, Store
from imserver.store.templates import TemplateStore


class FullStore(Store, CardStore, DeadlineStore, DirectoryStore, TemplateStore, Protocol):
    pass
