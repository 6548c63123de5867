"""Which conversations this node must hear about: routing by interest.

A node subscribes to a conversation's channel while at least one user with
a session on this node is a member, and drops it when the last one leaves
(disconnects or is removed). This module keeps the two maps that decide it
-- local user -> conversations, conversation -> local users -- and answers
every change with the channels to subscribe and unsubscribe. Pure: the
Redis bus performs the subscriptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Change:
    """Conversations whose subscription must be added or removed."""

    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()


@dataclass(slots=True)
class Interest:
    _convs_of: dict[str, set[str]] = field(default_factory=dict)
    _local_members: dict[str, set[str]] = field(default_factory=dict)

    def users(self) -> list[str]:
        """Users with at least one session on this node (as the bus was told)."""
        return list(self._convs_of)

    def has_user(self, user: str) -> bool:
        return user in self._convs_of

    def convs_of(self, user: str) -> set[str]:
        """The conversations ``user`` is known here to be in (a copy)."""
        return set(self._convs_of.get(user, ()))

    def conversations(self) -> list[str]:
        """Conversations this node is subscribed to."""
        return list(self._local_members)

    def local_members(self, conv: str) -> frozenset[str]:
        return frozenset(self._local_members.get(conv, ()))

    def add_user(self, user: str, convs: Iterable[str]) -> Change:
        """``user``'s first local session: they need all their conversations."""
        if user in self._convs_of:
            return Change()
        mine = self._convs_of[user] = set(convs)
        return Change(subscribe=tuple(c for c in mine if self._join(c, user)))

    def refresh_user(self, user: str, convs: Iterable[str]) -> Change:
        """``user``'s conversations re-read (after a reconnect, changes may have been missed)."""
        mine = self._convs_of.get(user)
        if mine is None:
            return Change()
        now = set(convs)
        sub = [c for c in now - mine if self._join(c, user)]
        unsub = [c for c in mine - now if self._leave(c, user)]
        self._convs_of[user] = now
        return Change(subscribe=tuple(sub), unsubscribe=tuple(unsub))

    def remove_user(self, user: str) -> Change:
        """``user``'s last local session closed."""
        mine = self._convs_of.pop(user, set())
        return Change(unsubscribe=tuple(c for c in mine if self._leave(c, user)))

    def set_members(self, conv: str, members: Iterable[str]) -> Change:
        """``conv``'s membership changed: ``members`` is the new full list."""
        now = {u for u in members if u in self._convs_of}
        before = self._local_members.get(conv, set())
        gained = [u for u in now if u not in before]
        lost = [u for u in before if u not in now]
        sub = [conv for u in gained if self._join(conv, u)]
        unsub = [conv for u in lost if self._leave(conv, u)]
        for u in gained:
            self._convs_of[u].add(conv)
        for u in lost:
            self._convs_of[u].discard(conv)
        return Change(subscribe=tuple(sub), unsubscribe=tuple(unsub))

    def _join(self, conv: str, user: str) -> bool:
        """Add a local member; True if ``conv`` had none (subscribe now)."""
        users = self._local_members.get(conv)
        if users is None:
            self._local_members[conv] = {user}
            return True
        users.add(user)
        return False

    def _leave(self, conv: str, user: str) -> bool:
        """Remove a local member; True if that was the last (unsubscribe now)."""
        users = self._local_members.get(conv)
        if users is None:
            return False
        users.discard(user)
        if users:
            return False
        del self._local_members[conv]
        return True


@dataclass(slots=True)
class Overheard:
    """Conversation changes announced while a user's conversations were being read.

    A user's first session reads their conversations from the store, then
    joins the interest map. A conversation created (or a member added) in
    between is in neither: the read came too early, and the announcement
    found no local member. Each read in flight collects the announcements
    heard meanwhile, so the bus can re-check them once the user is known.
    """

    _reads: dict[int, dict[str, int | None]] = field(default_factory=dict)
    _next: int = 0

    def start(self) -> int:
        """A read begins; the token ends it."""
        self._next += 1
        self._reads[self._next] = {}
        return self._next

    def heard(self, conv: str, after: int | None) -> None:
        """``conv`` changed; members are to be filled from ``after`` (None: from now)."""
        for convs in self._reads.values():
            if conv not in convs:
                convs[conv] = after
            elif after is not None:  # the earliest point wins: fill the most
                was = convs[conv]
                convs[conv] = after if was is None else min(was, after)

    def finish(self, token: int) -> dict[str, int | None]:
        """The read is over: what was announced during it (conv -> fill point)."""
        return self._reads.pop(token, {})
