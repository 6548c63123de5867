"""The errors a store raises when a write cannot apply, worded once for every backend.

Why here: clients see these messages (``docs/protocol.md``); a request refused
by a PostgreSQL node must read exactly as one refused by the SQLite store.
"""

from __future__ import annotations

from imserver.errors import NoSuchConversation, NoSuchMessage, NotMember, TooManyMembers


def no_such_conversation(conv: str) -> NoSuchConversation:
    return NoSuchConversation(f"no conversation {conv!r}")


def not_member(conv: str) -> NotMember:
    return NotMember(f"you are not a member of {conv}")


def no_such_message(conv: str, seq: int) -> NoSuchMessage:
    return NoSuchMessage(f"no message {seq} in {conv}")


def too_many_members(count: int, limit: int) -> TooManyMembers:
    return TooManyMembers(f"the group would have {count} members; the limit is {limit}")
