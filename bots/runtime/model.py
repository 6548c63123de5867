"""The values a bot sees and returns, and the base class it extends.

A bot is pure: it turns an event into a card operation and an action into a
business call. It performs no I/O, so the runtime can persist its answer
before anything leaves the process (that is what makes restarts safe), and
a bot can be tested without a server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from imserver_sdk import CallbackAction

#: An event id is the business system's own key for an event; the card's
#: ``out_track_id`` is derived from it, so it uses that alphabet (docs/cards.md
#: section 3) and leaves room for the prefix.
EVENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,56}")
EVENT_TYPE_RE = re.compile(r"[a-z0-9_.-]{1,64}")
TRACK_PREFIX = "ev-"


def track_id(event_id: str) -> str:
    """The card ``out_track_id`` of the card an event created.

    Derived, not stored: a retried push after a crash computes the same id,
    and the server answers a repeated ``out_track_id`` with ``duplicate: true``
    and delivers nothing. The prefix also keeps an all-dots event id legal.
    """
    return TRACK_PREFIX + event_id


KEYED_PREFIX = "bk-"


def card_track_id(event_id: str, key: str | None = None) -> str:
    """The ``out_track_id`` of an event's card named ``key`` (``None``: its main card).

    A bot that pushes several cards for one event (a sub-task per unit, a
    follow-up card after a claim) names each with a ``key``; the id is a
    digest of both, so it fits the server's 64 characters and a retried push
    computes the same id (the server answers ``duplicate``). Bots call this
    too, to address an earlier card in a :class:`CardUpdate`.
    """
    if key is None:
        return track_id(event_id)
    digest = hashlib.sha256(f"{event_id}\x00{key}".encode()).hexdigest()[:40]
    return KEYED_PREFIX + digest


class EventRejected(Exception):
    """A business event the bot cannot turn into a card; answered with a 4xx.

    ``code`` is stable (the business system branches on it), ``field`` names
    the offending path in the event (``data.approvers[2]``).
    """

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 400):
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class BotEvent:
    """One business-system event, as accepted by the webhook."""

    event_id: str
    type: str
    data: dict[str, Any]
    received_at: float


@dataclass(frozen=True, slots=True)
class CardPush:
    """Push a new card. ``out_track_id`` is set by the runtime (:func:`card_track_id`).

    ``key`` names one of several cards of an event (``None``: the event's main
    card, ``ev-<event_id>``); from ``on_action`` a key is required and should
    be derived from the ``action_id``, so a repeat pushes nothing new.
    ``units`` are org unit ids the server resolves to their members
    (``to.units``; ``recursive``: with every unit below, else only the unit's
    own members). ``meta`` is stored with the card and handed
    back as :attr:`BotAction.meta` when someone acts on it.
    """

    card: dict[str, Any]
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    key: str | None = None
    units: tuple[str, ...] = ()
    recursive: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CardUpdate:
    """Change a card (the keys of ``PATCH /api/v1/apps/cards/...``).

    From ``on_event``, ``event_id`` names the earlier event whose card to
    change. ``card`` instead names any card by its ``out_track_id`` (see
    :func:`card_track_id`): in :attr:`Effects.cards` that is how a bot
    updates a card other than the one acted on (an issuer's aggregate card).
    As the answer of ``on_action`` both are ignored: it applies to the card
    that was acted on.
    """

    changes: dict[str, Any]
    event_id: str | None = None
    card: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """A work notice (``urgent``: a DING each recipient must confirm), docs/cards.md s.7."""

    title: str
    text: str
    users: tuple[str, ...]
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class Timer:
    """Call :meth:`Bot.on_timer` at ``at`` (Unix seconds), durably: it survives restarts.

    ``name`` is unique within the event (a second timer of the same name is
    ignored); ``data`` is handed back in :class:`TimerFired`.
    """

    at: float
    name: str
    data: dict[str, Any] = field(default_factory=dict)


CardOp = CardPush | CardUpdate | Notice | Timer


@dataclass(frozen=True, slots=True)
class BusinessCall:
    """A JSON body to POST to the business system's ``forward_url``.

    The runtime signs it, adds the idempotency key (the callback's
    ``action_id``) and retries it until the business system answers 2xx.
    """

    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BotAction:
    """A card callback, plus the event whose card it was (``None`` if unknown).

    ``state`` is the event's bot state (see :attr:`Effects.state`), ``meta``
    what the acted-on card was pushed with (:attr:`CardPush.meta`).
    """

    callback: CallbackAction
    event: BotEvent | None = field(default=None)
    state: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A :class:`Timer` whose time has come, with its event and the event's state."""

    name: str
    data: dict[str, Any]
    event: BotEvent
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Effects:
    """Everything a bot method may ask for, stored in one transaction before any I/O.

    ``forward`` and ``answer`` only mean something from ``on_action`` (the
    business call, and the update of the acted-on card given as the
    callback's answer). ``cards`` are further operations, performed in order
    by the outbox. ``state`` replaces the event's bot state (``None``: keep).
    """

    forward: BusinessCall | None = None
    answer: CardUpdate | None = None
    cards: tuple[CardOp, ...] = ()
    state: dict[str, Any] | None = None


class Bot:
    """Subclass this: two methods, no I/O (docs/bots.md, "Writing a bot").

    ``options`` is the bot's ``[bot.options]`` table from the config.
    ``REFUSALS`` renames server refusal codes for the business system (for
    example ``{"no_such_user": "unknown_approver"}``).
    """

    REFUSALS: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.options: dict[str, Any] = dict(options or {})

    def on_event(self, event: BotEvent) -> CardPush | CardUpdate | Effects | None:
        """Turn a business event into card operations; raise :class:`EventRejected`."""
        raise NotImplementedError

    def on_action(
        self, action: BotAction
    ) -> tuple[BusinessCall | None, CardUpdate | None] | Effects:
        """Turn a card decision into a business call and an update of that card.

        Return :class:`Effects` to also push or update other cards, send
        notices, set timers or change the event's state.
        """
        raise NotImplementedError

    def on_timer(self, fired: TimerFired) -> Effects:
        """A timer set by this bot is due; only ``cards`` and ``state`` are used."""
        return Effects()
