"""督查督办 supervision bot (docs/bots.md section 8)."""

from bots.supervision.bot import SupervisionBot

__all__ = ["SupervisionBot"]
