"""Who is in a conversation, cached for the hot path.

Every send needs the member list (to fan out) and every request a membership
check; reading them from the store each time would cost a round trip per
message. Entries are dropped when any node announces a change on the bus, so
the cache is correct across nodes; the store still re-checks membership inside
the append transaction, so a stale entry can never let a non-member write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imserver.errors import InvalidField, NoSuchConversation, NotMember
from imserver.store.base import Store
from imserver.store.records import Conversation


@dataclass(slots=True, frozen=True)
class ConvMembers:
    conv: Conversation
    roles: dict[str, str]  # user -> role

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(self.roles)


def dm_parties(conv: str) -> tuple[str, str]:
    """The two users of ``dm:<a>:<b>``; rejects non-canonical ids."""
    _, a, b = conv.split(":", 2)
    if not a < b:
        raise InvalidField(
            "a 1:1 conversation id is dm:<a>:<b> with a < b (byte order)", field="conv"
        )
    return a, b


def private_parties(conv: str) -> tuple[str, ...] | None:
    """Who alone may be in ``conv`` when its id names them: a 1:1 or a notice conversation.

    ``dm:<a>:<b>`` belongs to ``a`` and ``b``, ``n:<app>:<user>`` to ``user``;
    group ids name nobody (None).
    """
    if conv.startswith("dm:"):
        return dm_parties(conv)
    if conv.startswith("n:") and conv.count(":") == 2:
        return (conv.split(":", 2)[2],)
    return None


def dm_id(a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    return f"dm:{lo}:{hi}"


class MembershipCache:
    def __init__(self, store: Store, max_entries: int = 100_000) -> None:
        self._store = store
        self._entries: dict[str, ConvMembers] = {}
        self._max = max_entries

    async def get(self, conv: str) -> ConvMembers | None:
        entry = self._entries.get(conv)
        if entry is not None:
            return entry
        c = await self._store.get_conversation(conv)
        if c is None:
            return None
        members = await self._store.members(conv)
        entry = ConvMembers(c, {m.user: m.role for m in members})
        if len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)))
        self._entries[conv] = entry
        return entry

    async def require_member(self, conv: str, user: str) -> ConvMembers:
        """The conversation's members if ``user`` is one; else a stable error.

        Someone else's 1:1 or notice conversation is ``not_member`` whether it
        exists or not (as ``send`` answers), so nobody learns who talks to whom.
        """
        parties = private_parties(conv)
        if parties is not None and user not in parties:
            raise NotMember(f"you are not a member of {conv}")
        entry = await self.get(conv)
        if entry is None:
            if conv.startswith("dm:"):
                raise NoSuchConversation(f"no messages with {conv} yet")
            raise NoSuchConversation(f"no conversation {conv}")
        if user not in entry.roles:
            raise NotMember(f"you are not a member of {conv}")
        return entry

    def invalidate(self, conv: str) -> None:
        self._entries.pop(conv, None)

    def on_conv_changed(self, payload: dict[str, Any]) -> None:
        """Bus handler for ``TOPIC_CONV_CHANGED``."""
        self.invalidate(payload["conv"])
