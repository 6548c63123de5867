"""Registers the card requests with the core's WebSocket request registry.

Called by the composition root (``imserver/app.py``) before it builds the
``Dispatcher``: this is how ``card.act``, ``card.get``, ``todo`` and the card
part of ``sync`` reach ``CardService`` without the core importing ``cards/``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from cards.requests import (
    CardAct,
    CardGet,
    Todo,
    parse_card_act,
    parse_card_get,
    parse_todo,
    read_cards_since,
)
from cards.service import CardService
from imserver.gateway.extensions import RequestExtensions
from imserver.services.caller import Caller

CARDS_PAGE = 100  # card views per sync answer


def register_requests(extensions: RequestExtensions, cards: CardService) -> None:
    """Answer the card requests with ``cards``.

    The handlers return the service's coroutine rather than awaiting it, so a
    card request costs no extra coroutine over calling the service directly.
    """

    def act(caller: Caller, req: CardAct) -> Awaitable[dict[str, Any]]:
        return cards.act(caller, req.card_id, req.action, req.action_id, req.inputs, req.target)

    def get(caller: Caller, req: CardGet) -> Awaitable[dict[str, Any]]:
        return cards.get(caller, req.card_id)

    def todo(caller: Caller, req: Todo) -> Awaitable[dict[str, Any]]:
        return cards.todo(caller, req.limit)

    def changed_since(caller: Caller, cards_since: int) -> Awaitable[dict[str, Any]]:
        return cards.changed_since(caller, cards_since, CARDS_PAGE)

    extensions.add_request("card.act", CardAct, parse_card_act, act)
    extensions.add_request("card.get", CardGet, parse_card_get, get)
    extensions.add_request("todo", Todo, parse_todo, todo)
    extensions.add_sync_part(read_cards_since, changed_since)
