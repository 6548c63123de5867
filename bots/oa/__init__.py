"""The 统建 OA approval bot (config: ``class = "bots.oa:OABot"``)."""

from bots.oa.bot import OABot

__all__ = ["OABot"]
