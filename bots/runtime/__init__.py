"""The bot runtime: webhook, durable store, outboxes, callbacks (docs/bots.md).

A bot subclasses :class:`Bot` and implements two methods; the runtime does the
rest - signature checks, idempotency, retries, restarts.
"""

from bots.runtime.model import (
    Bot,
    BotAction,
    BotEvent,
    BusinessCall,
    CardPush,
    CardUpdate,
    Effects,
    EventRejected,
    Notice,
    Timer,
    TimerFired,
    card_track_id,
    track_id,
)

__all__ = [
    "Bot",
    "BotAction",
    "BotEvent",
    "BusinessCall",
    "CardPush",
    "CardUpdate",
    "Effects",
    "EventRejected",
    "Notice",
    "Timer",
    "TimerFired",
    "card_track_id",
    "track_id",
]
