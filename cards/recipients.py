"""Who a push or a notice reaches: its ``to`` resolved into users and groups.

``to`` names users, groups and org units (with or without sub-units). Every
one must exist and be inside the app's scope; a unit is resolved at send
time, so whoever is in it then receives the card. The notice conversation
``n:<app>:<user>`` is where an app's messages to one person live; a card or
notice to ``cards.broadcast_min_holders`` people or more goes, stored once,
to a broadcast conversation ``b:<app>:<digest>`` instead (``audience_conv``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cards.scope import AppScope, named_in_to
from cards.store import FullStore
from imserver.directory.model import UNIT_ID_RE
from imserver.errors import (
    InvalidField,
    NoSuchConversation,
    NoSuchUnit,
    NoSuchUser,
    TooManyMembers,
)
from imserver.protocol.fields import Fields
from imserver.services.membership import MembershipCache
from imserver.store.records import AppRecord, NewMessage
from imserver.store.rows import BROADCAST_PREFIX


def notice_conv(app_id: str, user: str) -> str:
    return f"n:{app_id}:{user}"


def audience_conv(app_id: str, users: Iterable[str]) -> str:
    """The broadcast conversation of ``app_id`` to exactly ``users``: ``b:<app>:<digest>``.

    A card or notice sent to many people is stored once, as one message in
    this conversation, and fanned out like a group message (one encoded
    frame for every socket) instead of one message per person in
    ``n:<app>:<user>``. The id is a digest of the sorted member set, so the
    next card to the same people is the next message of the same
    conversation and writes no member rows; a different set is another
    conversation. Per-holder state stays apart: each member's read cursor,
    todo, DING confirmation and private data. Cards held this way have no
    ``card_holders`` row per person: their ``audience`` names the conversation.
    """
    digest = hashlib.sha256("\n".join(sorted(set(users))).encode()).digest()
    return f"{BROADCAST_PREFIX}{app_id}:{base64.urlsafe_b64encode(digest[:16]).decode()[:22]}"


def is_broadcast(conv: str) -> bool:
    return conv.startswith(BROADCAST_PREFIX)


def notice_owner(conv: str) -> str:
    """The person whose notice conversation ``n:<app>:<user>`` is."""
    return conv.split(":", 2)[2]


def readers(conv: str, groups: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Who receives a message an app delivered to ``conv``.

    A notice conversation's owner; for a group or a broadcast conversation,
    its members as given in ``groups``.
    """
    return (notice_owner(conv),) if conv.startswith("n:") else groups[conv]


@dataclass(slots=True, frozen=True)
class Delivery:
    """Where an app's card or notice lands: the messages, the notice conversations to
    ensure, who reads each conversation, and the broadcast conversation ("" if none)."""

    messages: list[NewMessage]
    convs: list[tuple[str, str, str]]  # (conv, member, name) for the store to ensure
    readers: dict[str, tuple[str, ...]]  # group or broadcast conversation -> its members
    audience: str


def plan_delivery(
    app: AppRecord,
    users: list[str],
    groups: list[tuple[str, tuple[str, ...]]],
    broadcast_min: int,
    message: Callable[[str, tuple[str, ...]], NewMessage],
) -> Delivery:
    """One message per person in ``n:<app>:<user>``, or one for all in their broadcast
    conversation once there are ``broadcast_min`` of them; one per group either way.

    ``message(conv, ding_to)`` builds the app's message for ``conv``; ``ding_to``
    are its readers (who must confirm it if it is urgent).
    """
    name = app.name or app.app_id
    members = dict(groups)
    audience = ""
    if len(users) >= broadcast_min:  # stored once, fanned out like a group message
        audience = audience_conv(app.app_id, users)
        members[audience] = tuple(users)
        messages = [message(audience, tuple(users))]
        convs = [(audience, u, name) for u in users]
    else:
        messages = [message(notice_conv(app.app_id, u), (u,)) for u in users]
        convs = [(notice_conv(app.app_id, u), u, name) for u in users]
    messages += [message(g, ms) for g, ms in groups]
    return Delivery(messages, convs, members, audience)


class Recipients:
    def __init__(
        self, store: FullStore, members: MembershipCache, scope: AppScope, max_recipients: int
    ) -> None:
        self._store = store
        self._members = members
        self._scope = scope
        self._max_recipients = max_recipients

    async def resolve(
        self, app: AppRecord, to: Any
    ) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
        """Users addressed directly, and (group, members); checks existence and scope."""
        f = Fields(to if isinstance(to, dict) else {}, prefix="to.")
        if not isinstance(to, dict):
            raise InvalidField("'to' must be an object with users and/or groups", field="to")
        users = list(
            f.user_list("users", required=False, max_items=self._max_recipients, allow_empty=True)
        )
        group_ids = to.get("groups") or []
        if not isinstance(group_ids, list) or not all(isinstance(g, str) for g in group_ids):
            raise InvalidField("'to.groups' must be a list of group ids", field="to.groups")
        unit_targets = self._unit_targets(to.get("units") or [])
        if not users and not group_ids and not unit_targets:
            raise InvalidField("give at least one of to.users, to.groups or to.units", field="to")
        units = await self._store.units_by_ids(uid for uid, _ in unit_targets)
        missing_units = [uid for uid, _ in unit_targets if uid not in units]
        if missing_units:
            raise NoSuchUnit(f"no such unit: {', '.join(missing_units[:10])}")
        if not self._scope.reaches_everyone(app):  # else 1,000 users need no 1,000 entries
            await self._scope.check(
                app, named_in_to(users, group_ids, [uid for uid, _ in unit_targets])
            )
        missing = set(users) - await self._store.existing_users(users)
        if missing:
            raise NoSuchUser(f"no such user: {', '.join(sorted(missing)[:10])}")
        if unit_targets:
            # Resolved now: whoever is in the unit at send time receives it.
            via_units = await self._store.unit_recipients(
                [(units[uid].path, recursive) for uid, recursive in unit_targets]
            )
            users = list(dict.fromkeys([*users, *sorted(via_units)]))
            if len(users) > self._max_recipients:
                raise TooManyMembers(f"a push may reach at most {self._max_recipients} users")
        groups = []
        for g in dict.fromkeys(group_ids):
            entry = await self._members.get(g)
            if entry is None or entry.conv.kind != "group":
                raise NoSuchConversation(f"no group {g}")
            groups.append((g, entry.users))
        return users, groups

    @staticmethod
    def _unit_targets(value: Any) -> list[tuple[str, bool]]:
        """``to.units``: ``[{"id": ..., "recursive": bool}]`` (recursive: with sub-units)."""
        if not isinstance(value, list) or len(value) > 100:
            raise InvalidField("'to.units' must be a list of at most 100 units", field="to.units")
        out = []
        for i, item in enumerate(value):
            uid = item.get("id") if isinstance(item, dict) else None
            recursive = item.get("recursive", True) if isinstance(item, dict) else None
            if not isinstance(uid, str) or UNIT_ID_RE.fullmatch(uid) is None:
                raise InvalidField(f"to.units[{i}].id must be a unit id", field=f"to.units[{i}].id")
            if not isinstance(recursive, bool):
                raise InvalidField(
                    f"to.units[{i}].recursive must be true or false",
                    field=f"to.units[{i}].recursive",
                )
            out.append((uid, recursive))
        return out
