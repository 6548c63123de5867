"""12345 政务服务便民热线 dispatch bot (docs/bots.md section 7)."""

from bots.hotline.bot import HotlineBot

__all__ = ["HotlineBot"]
