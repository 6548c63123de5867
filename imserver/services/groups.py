"""Groups: create, rename, add/remove members, leave, roles, listing.

Every change is stored together with a ``system`` message in the group, so
members learn about it in order, by event or by sync, like any message.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from imserver.bus.base import TOPIC_CONV_CHANGED, Bus
from imserver.config import Config
from imserver.errors import (
    Forbidden,
    InvalidField,
    NoSuchConversation,
    NoSuchUser,
    NotMember,
    TooManyMembers,
)
from imserver.protocol import requests as rq
from imserver.services.caller import Caller
from imserver.services.chat import ChatService, now_ms
from imserver.services.membership import ConvMembers, MembershipCache
from imserver.store.base import Store
from imserver.store.records import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER, MembershipChange, NewMessage

MANAGERS = (ROLE_OWNER, ROLE_ADMIN)


class GroupService:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        members: MembershipCache,
        chat: ChatService,
        config: Config,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._members = members
        self._chat = chat
        self._max_members = config.limits.max_group_members
        self._clock = clock

    def _notice(self, caller: Caller, conv: str, body: dict[str, Any]) -> NewMessage:
        return NewMessage(
            conv=conv,
            sender=caller.user,
            device=caller.device,
            kind="system",
            body={"actor": caller.user, **body},
            ts=now_ms(self._clock),
        )

    async def _require_users(self, users: tuple[str, ...]) -> None:
        missing = set(users) - await self._store.existing_users(users)
        if missing:
            raise NoSuchUser(f"no such user: {', '.join(sorted(missing)[:10])}")

    async def _group(self, conv: str, caller: Caller, *roles: str) -> ConvMembers:
        entry = await self._members.require_member(conv, caller.user)
        if entry.conv.kind != "group":
            raise InvalidField("not a group conversation", field="conv")
        if roles and entry.roles[caller.user] not in roles:
            raise Forbidden(f"only the group's {' or '.join(roles)} may do this")
        return entry

    async def _apply(
        self, caller: Caller, entry: ConvMembers, change: MembershipChange, body: dict[str, Any]
    ) -> None:
        conv = entry.conv.id
        msg = await self._store.change_group(
            conv, change, self._notice(caller, conv, body), self._max_members
        )
        # Everyone before *and* after the change hears of it (removed users too).
        recipients = dict.fromkeys(entry.users)
        recipients.update(dict.fromkeys(u for u, _ in change.add))
        self._members.invalidate(conv)
        # ``after``: members new to a node get the conversation from the notice on.
        await self._bus.publish(TOPIC_CONV_CHANGED, {"conv": conv, "after": msg.seq - 1})
        await self._chat.publish_message(msg, tuple(recipients))

    async def create(self, caller: Caller, req: rq.GroupCreate) -> dict[str, Any]:
        await self._chat.content.check(caller.user, "group.name", "new group", [req.name])
        members = tuple(m for m in req.members if m != caller.user)
        if len(members) + 1 > self._max_members:
            raise TooManyMembers(f"a group holds at most {self._max_members} members")
        await self._require_users(members)
        conv = "g:" + secrets.token_urlsafe(16)
        notice = self._notice(
            caller, conv, {"event": "group_created", "name": req.name, "users": list(members)}
        )
        msg = await self._store.create_group(conv, req.name, caller.user, members, notice)
        everyone = (caller.user, *members)
        await self._chat.publish_message(msg, everyone)
        return {"conv": conv, "name": req.name, "members": list(everyone)}

    async def rename(self, caller: Caller, req: rq.GroupRename) -> dict[str, Any]:
        entry = await self._group(req.conv, caller, *MANAGERS)
        await self._chat.content.check(caller.user, "group.name", req.conv, [req.name])
        await self._apply(
            caller,
            entry,
            MembershipChange(rename=req.name),
            {"event": "group_renamed", "name": req.name},
        )
        return {"conv": req.conv, "name": req.name}

    async def add(self, caller: Caller, req: rq.GroupAdd) -> dict[str, Any]:
        entry = await self._group(req.conv, caller, *MANAGERS)
        new = tuple(u for u in req.members if u not in entry.roles)
        if not new:
            return {"conv": req.conv, "added": []}
        await self._require_users(new)
        if len(entry.roles) + len(new) > self._max_members:
            raise TooManyMembers(f"a group holds at most {self._max_members} members")
        await self._apply(
            caller,
            entry,
            MembershipChange(add=tuple((u, ROLE_MEMBER) for u in new)),
            {"event": "member_added", "users": list(new)},
        )
        return {"conv": req.conv, "added": list(new)}

    async def remove(self, caller: Caller, req: rq.GroupRemove) -> dict[str, Any]:
        entry = await self._group(req.conv, caller, *MANAGERS)
        targets = tuple(u for u in req.members if u in entry.roles)
        if not targets:
            raise NotMember(
                "none of these users is a member",
            )
        my_role = entry.roles[caller.user]
        for u in targets:
            if u == caller.user:
                raise InvalidField("use group.leave to leave a group", field="members")
            if entry.roles[u] == ROLE_OWNER or (
                my_role == ROLE_ADMIN and entry.roles[u] == ROLE_ADMIN
            ):
                raise Forbidden(f"you may not remove {u}")
        await self._apply(
            caller,
            entry,
            MembershipChange(remove=targets),
            {"event": "member_removed", "users": list(targets)},
        )
        return {"conv": req.conv, "removed": list(targets)}

    async def leave(self, caller: Caller, req: rq.GroupLeave) -> dict[str, Any]:
        entry = await self._group(req.conv, caller)
        if entry.roles[caller.user] == ROLE_OWNER:
            raise Forbidden("the owner cannot leave the group")
        await self._apply(
            caller,
            entry,
            MembershipChange(remove=(caller.user,)),
            {"event": "member_left", "users": [caller.user]},
        )
        return {"conv": req.conv}

    async def set_role(self, caller: Caller, req: rq.GroupRole) -> dict[str, Any]:
        entry = await self._group(req.conv, caller, ROLE_OWNER)
        if req.user not in entry.roles:
            raise NotMember(f"{req.user} is not a member of {req.conv}")
        if entry.roles[req.user] == ROLE_OWNER:
            raise Forbidden("the owner's role cannot change")
        await self._apply(
            caller,
            entry,
            MembershipChange(set_roles=((req.user, req.role),)),
            {"event": "role_changed", "users": [req.user], "role": req.role},
        )
        return {"conv": req.conv, "user": req.user, "role": req.role}

    async def members(self, caller: Caller, req: rq.GroupMembers) -> dict[str, Any]:
        entry = await self._group(req.conv, caller)
        return {
            "conv": req.conv,
            "members": [{"user": u, "role": r} for u, r in sorted(entry.roles.items())],
        }

    async def list(self, caller: Caller) -> dict[str, Any]:
        states = await self._store.conversations_of(caller.user)
        return {
            "groups": [
                {
                    "conv": st.conv,
                    "name": st.name,
                    "role": st.role,
                    "members": st.member_count,
                    "last_seq": st.last_seq,
                }
                for st in states
                if st.kind == "group"
            ]
        }

    async def remove_everywhere(self, user: str) -> int:
        """Take a departed member out of every group (the directory removed them).

        An owner's group passes to its first admin, else its first member, so
        no group is left without someone who can manage it.
        """
        system = Caller("system", "server")
        removed = 0
        for st in await self._store.conversations_of(user):
            if st.kind != "group":
                continue
            entry = await self._members.get(st.conv)
            if entry is None or user not in entry.roles:
                continue
            others = sorted(u for u in entry.roles if u != user)
            roles: tuple[tuple[str, str], ...] = ()
            if entry.roles[user] == ROLE_OWNER and others:
                admins = [u for u in others if entry.roles[u] == ROLE_ADMIN]
                roles = (((admins or others)[0], ROLE_OWNER),)
            await self._apply(
                system,
                entry,
                MembershipChange(remove=(user,), set_roles=roles),
                {"event": "member_removed", "users": [user], "reason": "left_organisation"},
            )
            removed += 1
        return removed

    # -- governance (administrators) -------------------------------------------
    async def archive(self, actor: str, conv: str, reason: str) -> dict[str, Any]:
        """Make a group read-only; every member is told why."""
        entry = await self._members.get(conv)
        if entry is None or entry.conv.kind != "group":
            raise NoSuchConversation(f"no group {conv}")
        if entry.conv.archived:
            return {"conv": conv, "archived": True, "changed": False}
        # The reason is shown to every member in the group_archived notice.
        await self._chat.content.check(actor, "governance.reason", conv, [reason])
        await self._apply(
            Caller(actor, "admin"),
            entry,
            MembershipChange(archive=True),
            {"event": "group_archived", "reason": reason},
        )
        return {"conv": conv, "archived": True, "changed": True}

    async def merge(self, actor: str, source: str, target: str) -> dict[str, Any]:
        """Move ``source``'s members into ``target``, then archive ``source``."""
        if source == target:
            raise InvalidField("source and target are the same group", field="target")
        src = await self._members.get(source)
        dst = await self._members.get(target)
        for conv, entry in ((source, src), (target, dst)):
            if entry is None or entry.conv.kind != "group" or entry.conv.archived:
                raise NoSuchConversation(f"no live group {conv}")
        assert src is not None and dst is not None
        new = tuple(u for u in src.users if u not in dst.roles)
        if len(dst.roles) + len(new) > self._max_members:
            raise TooManyMembers(f"the merged group would exceed {self._max_members} members")
        admin = Caller(actor, "admin")
        reason = f"merged into {dst.conv.name} ({target})"
        # Checked before anyone is moved, so a refusal leaves both groups as they were.
        await self._chat.content.check(actor, "governance.reason", source, [reason])
        if new:
            await self._apply(
                admin,
                dst,
                MembershipChange(add=tuple((u, ROLE_MEMBER) for u in new)),
                {"event": "member_added", "users": list(new), "merged_from": source},
            )
        await self.archive(actor, source, reason)
        return {"source": source, "target": target, "added": list(new)}
