"""The card requests on the WebSocket: ``card.act``, ``card.get``, ``todo``, and
``cards_since`` in ``sync`` — parsing only (sans-I/O).

The core knows none of these (``imserver/`` never imports ``cards/``); the
composition root registers them through ``cards.ws_requests``. The fields are
read with the core's readers (``imserver.protocol.fields``), so bad input gets
the same ``invalid_field`` errors, naming the same fields, as every core
request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from imserver.config import LimitsConfig
from imserver.errors import InvalidField
from imserver.protocol.fields import Fields
from imserver.protocol.requests import ExtensionRequest

CARD_ID_RE = re.compile(r"c_[A-Za-z0-9_-]{8,32}")
PENDING_CARDS_PAGE = (100, 200)  # (default, maximum) cards per todo answer


@dataclass(slots=True, frozen=True)
class CardAct(ExtensionRequest):
    card_id: str
    action: str
    action_id: str
    inputs: dict[str, Any]
    #: 转交 / 加签 / 退回: what the act points at (checked by ``cards.workflow_inputs``).
    target: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class CardGet(ExtensionRequest):
    card_id: str


@dataclass(slots=True, frozen=True)
class Todo(ExtensionRequest):
    limit: int


def _card_id(f: Fields) -> str:
    card_id = f.req_string("card_id", max_len=64)
    if CARD_ID_RE.fullmatch(card_id) is None:
        raise InvalidField("'card_id' is not a card id", field="card_id")
    return card_id


def parse_card_act(f: Fields, _: LimitsConfig) -> CardAct:
    inputs = f.sub("inputs", required=False)
    target = f.sub("target", required=False)
    return CardAct(
        card_id=_card_id(f),
        action=f.req_string("action", max_len=32),
        action_id=f.req_string("action_id", max_len=64),
        inputs=dict(inputs.raw) if inputs is not None else {},
        target=dict(target.raw) if target is not None else None,
    )


def parse_card_get(f: Fields, _: LimitsConfig) -> CardGet:
    return CardGet(card_id=_card_id(f))


def parse_todo(f: Fields, _: LimitsConfig) -> Todo:
    limit = f.integer("limit", required=False, minimum=1, maximum=PENDING_CARDS_PAGE[1])
    return Todo(limit=limit or PENDING_CARDS_PAGE[0])


def read_cards_since(f: Fields, _: LimitsConfig) -> int:
    """``sync``'s ``cards_since``: the card cursor of the last answer (0: from the start)."""
    return f.integer("cards_since", required=False) or 0


#: The card request types, in the order they are registered.
CARD_REQUEST_TYPES = ("card.act", "card.get", "todo")
