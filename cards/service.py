"""Cards: push, update, act, todo, notices — the card action path.

``act`` reads as the path in ARCHITECTURE.md: validate (holder? actor? known
action and inputs?) → the pure state machine (``cards.policy.decide``) →
persist the new version, todo rows and the callback atomically
(``save_card``; an optimistic version check makes concurrent acts safe) →
wake the callback dispatcher → fan the new version out to every holder.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cards.model import (
    approval_from_json,
    approval_to_json,
    check_inputs,
    parse_card,
    parse_update,
    render_view,
)
from cards.policy import FINAL_STATES, Act, ApprovalState, Refused, actionable_by, close, decide
from cards.scope import AppScope, Named, named_in_card, named_in_to, named_in_update
from imserver.bus.base import TOPIC_DELIVER, Bus
from imserver.config import Config
from imserver.directory.model import UNIT_ID_RE
from imserver.errors import (
    ActionIdConflict,
    AlreadyActed,
    CardDecided,
    InvalidField,
    NoSuchCard,
    NoSuchConversation,
    NoSuchDing,
    NoSuchUnit,
    NoSuchUser,
    NotActor,
    NotYourTurn,
    OutOfScope,
    TooManyMembers,
    VersionConflict,
)
from imserver.masking import PII_READ
from imserver.metrics import Metrics
from imserver.protocol.fields import Fields
from imserver.protocol.frames import event_frame
from imserver.services.caller import Caller
from imserver.services.chat import ChatService, now_ms
from imserver.services.content_policy import card_texts
from imserver.services.directory import DirectoryStore
from imserver.services.membership import MembershipCache
from imserver.store.base import CardStore, DeadlineStore, Store
from imserver.store.records import (
    AppRecord,
    AuditEntry,
    CardChange,
    CardRecord,
    Message,
    NewCard,
    NewMessage,
    OutboxEntry,
)

log = logging.getLogger(__name__)

MAX_SAVE_TRIES = 8
REFUSALS = {
    "not_actor": NotActor,
    "card_decided": CardDecided,
    "not_your_turn": NotYourTurn,
    "already_acted": AlreadyActed,
    "action_id_conflict": ActionIdConflict,
}


class FullStore(Store, CardStore, DeadlineStore, DirectoryStore, Protocol):
    pass


def notice_conv(app_id: str, user: str) -> str:
    return f"n:{app_id}:{user}"


def notice_owner(conv: str) -> str:
    """The person whose notice conversation ``n:<app>:<user>`` is."""
    return conv.split(":", 2)[2]


def readers(conv: str, groups: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Who receives a message an app delivered to ``conv`` (a notice conv or a group)."""
    return (notice_owner(conv),) if conv.startswith("n:") else groups[conv]


class CardService:
    def __init__(
        self,
        store: FullStore,
        bus: Bus,
        members: MembershipCache,
        chat: ChatService,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._members = members
        self._chat = chat
        self._limits = config.cards
        self._ding_interval_ms = int(config.chat.ding_interval_s * 1000)
        self._metrics = metrics
        self._clock = clock
        #: Every principal an app names is checked against its scope here.
        self.scope = AppScope(store)
        #: Called after an action joins the outbox; the dispatcher sets it.
        self.wake_callbacks: Callable[[], None] = lambda: None

    # -- views ---------------------------------------------------------------
    def view(self, card: CardRecord, reveal: bool = False) -> dict[str, Any]:
        return render_view(
            card_id=card.id,
            app_id=card.app_id,
            version=card.version,
            doc=card.doc,
            approval=approval_from_json(card.doc, card.approval),
            callback=card.callback,
            overdue=bool(card.approval.get("overdue")),
            escalation=card.approval.get("escalation"),
            reveal=reveal,
        )

    async def revealed(self, users: list[str] | tuple[str, ...]) -> set[str]:
        """Who among ``users`` may see sensitive values unmasked (scope ``pii:read``)."""
        return await self._store.users_with_scope(users, PII_READ) if users else set()

    async def enrich(self, messages: list[dict[str, Any]], viewer: str) -> None:
        """Attach each card message's latest view (sync and history show the current card)."""
        ids = [m["body"]["card_id"] for m in messages if m["kind"] == "card" and m["body"]]
        if not ids:
            return
        cards = await self._store.cards_by_ids(ids)
        reveal = bool(await self.revealed([viewer]))
        for m in messages:
            if m["kind"] == "card" and m["body"]:
                card = cards.get(m["body"]["card_id"])
                if card is not None:
                    m["body"] = {"card_id": card.id, "card": self.view(card, reveal)}

    async def _publish_views(
        self,
        card: CardRecord,
        users: list[str] | tuple[str, ...],
        build: Any,
        stored: Message | None = None,
    ) -> None:
        """Publish ``build(view)`` to ``users``: one masked and one clear variant at most.

        Each variant is encoded once for all its recipients; only cards with
        sensitive fields need the second one. A ``stored`` message goes out
        as one payload (``variants``, with its ``conv`` and ``seq``) so a
        networked bus sees one seq once and can fill it from the store.
        """
        clear: set[str] = set()
        if any(f["sensitive"] for f in card.doc["fields"]):
            clear = await self.revealed(users)
        masked = [u for u in users if u not in clear]
        parts = [
            {"recipients": recipients, "frame": build(self.view(card, reveal))}
            for recipients, reveal in ((masked, False), (sorted(clear), True))
            if recipients
        ]
        if stored is not None:
            await self._bus.publish(
                TOPIC_DELIVER, {"variants": parts, "conv": stored.conv, "seq": stored.seq}
            )
            return
        for part in parts:
            await self._bus.publish(TOPIC_DELIVER, part)

    async def publish_card_message(
        self, card: CardRecord, msg: Message, recipients: tuple[str, ...]
    ) -> None:
        """A stored ``card`` message, with the card's view attached, to its readers."""
        wire = msg.to_wire()

        def frame(view: dict[str, Any]) -> dict[str, Any]:
            return event_frame("message", {**wire, "body": {"card_id": card.id, "card": view}})

        self._metrics.messages.labels("card").inc()
        await self._publish_views(card, recipients, frame, stored=msg)

    async def _fan_out(self, card: CardRecord, holders: list[str] | None = None) -> None:
        users = holders if holders is not None else await self._store.card_holders(card.id)
        await self._publish_views(card, users, lambda view: event_frame("card", view))

    async def _todo_changed(self, card_id: str, before: set[str], after: set[str]) -> None:
        for users, pending in ((sorted(after - before), True), (sorted(before - after), False)):
            if users:
                await self._bus.publish(
                    TOPIC_DELIVER,
                    {
                        "recipients": users,
                        "frame": event_frame("todo", {"card_id": card_id, "pending": pending}),
                    },
                )

    def timers(self, doc: dict[str, Any], now: int) -> tuple[tuple[str, int], ...]:
        """Reminders before ``due_at``, the overdue mark at it, escalation at it."""
        due = doc.get("due_at")
        if due is None:
            return ()
        out = [
            ("remind", due - offset * 1000)
            for offset in self._limits.reminder_offsets_s
            if due - offset * 1000 > now
        ]
        out.append(("overdue", due))
        if doc.get("escalate_to"):
            out.append(("escalate", due))
        return tuple(out)

    # -- recipients ----------------------------------------------------------
    async def _recipients(
        self, app: AppRecord, to: Any
    ) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
        """Users addressed directly, and (group, members); checks existence and scope."""
        f = Fields(to if isinstance(to, dict) else {}, prefix="to.")
        if not isinstance(to, dict):
            raise InvalidField("'to' must be an object with users and/or groups", field="to")
        users = list(
            f.user_list(
                "users", required=False, max_items=self._limits.max_recipients, allow_empty=True
            )
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
        await self.scope.check(app, named_in_to(users, group_ids, [uid for uid, _ in unit_targets]))
        missing = set(users) - await self._store.existing_users(users)
        if missing:
            raise NoSuchUser(f"no such user: {', '.join(sorted(missing)[:10])}")
        if unit_targets:
            # Resolved now: whoever is in the unit at send time receives it.
            via_units = await self._store.unit_recipients(
                [(units[uid].path, recursive) for uid, recursive in unit_targets]
            )
            users = list(dict.fromkeys([*users, *sorted(via_units)]))
            if len(users) > self._limits.max_recipients:
                raise TooManyMembers(
                    f"a push may reach at most {self._limits.max_recipients} users"
                )
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

    # -- apps: push, update, read, notices -----------------------------------
    async def push(self, app: AppRecord, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidField("body must be a JSON object", field="body")
        doc = parse_card(body.get("card"), self._limits)
        await self._chat.content.check(
            f"app:{app.app_id}", "card", doc["out_track_id"], card_texts(doc)
        )
        users, groups = await self._recipients(app, body.get("to"))
        holders = list(dict.fromkeys([*users, *(u for _, ms in groups for u in ms)]))
        if len(holders) > self._limits.max_recipients:
            raise TooManyMembers(f"a card may reach at most {self._limits.max_recipients} users")
        await self.scope.check(app, named_in_card(doc), holders)
        approval = ApprovalState(policy=None)
        if doc["policy"] is not None:
            strangers = [a for a in doc["policy"]["actors"] if a not in holders]
            if strangers:
                raise InvalidField(
                    f"actors must be recipients: {', '.join(strangers[:10])}",
                    field="card.policy.actors",
                )
            approval = approval_from_json(
                doc, {"state": "open", "decided_by": None, "decisions": []}
            )
        now = now_ms(self._clock)
        card_id = "c_" + secrets.token_urlsafe(12)
        urgent = bool(doc["urgent"])  # DING: each recipient must confirm
        messages = [
            self._card_message(
                app, notice_conv(app.app_id, u), card_id, now, (u,) if urgent else ()
            )
            for u in users
        ]
        messages += [
            self._card_message(app, g, card_id, now, members if urgent else ())
            for g, members in groups
        ]
        convs = [(notice_conv(app.app_id, u), u, app.name or app.app_id) for u in users]
        card, stored, duplicate = await self._store.create_card(
            NewCard(
                id=card_id,
                app_id=app.app_id,
                doc=doc,
                approval=approval_to_json(approval),
                pending=actionable_by(approval),
                holders=tuple(holders),
                now=now,
                timers=self.timers(doc, now),
            ),
            messages,
            convs,
        )
        if not duplicate:
            group_members = dict(groups)
            for msg in stored:
                await self.publish_card_message(card, msg, readers(msg.conv, group_members))
            await self._todo_changed(card.id, set(), set(actionable_by(approval)))
        return {
            "card_id": card.id,
            "out_track_id": card.out_track_id,
            "version": card.version,
            "state": approval_from_json(card.doc, card.approval).state,
            "holders": len(holders)
            if not duplicate
            else len(await self._store.card_holders(card.id)),
            "duplicate": duplicate,
        }

    def _card_message(
        self, app: AppRecord, conv: str, card_id: str, now: int, ding_to: tuple[str, ...] = ()
    ) -> NewMessage:
        return NewMessage(
            conv=conv,
            sender=f"app:{app.app_id}",
            device="app",
            kind="card",
            body={"card_id": card_id},
            ts=now,
            ding_to=ding_to,
            ding_next_at=now + self._ding_interval_ms,
            card_id=card_id,
        )

    async def _by_track(self, app: AppRecord, out_track_id: str) -> CardRecord:
        card = await self._store.get_card_by_track(app.app_id, out_track_id)
        if card is None:
            raise NoSuchCard(f"app {app.app_id} has no card {out_track_id!r}")
        return card

    async def get_for_app(self, app: AppRecord, out_track_id: str) -> dict[str, Any]:
        card = await self._by_track(app, out_track_id)
        view = self.view(card, reveal=True)
        view["decisions"] = card.approval["decisions"]  # with inputs and action ids
        if card.doc.get("urgent"):
            confirmed, unconfirmed = await self._store.card_ding_status(card.id)
            view["ding"] = {"confirmed": confirmed, "unconfirmed": unconfirmed}
        return view

    async def update(self, app: AppRecord, out_track_id: str, body: Any) -> dict[str, Any]:
        card = await self._by_track(app, out_track_id)
        return await self.apply_update(card, body, check_version=True)

    async def apply_update(
        self,
        card: CardRecord,
        body: Any,
        *,
        check_version: bool,
        callback: str | None = None,
        mark_overdue: bool = False,
        escalation: dict[str, Any] | None = None,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any]:
        """Apply an app's update (from PATCH or a callback answer) and fan it out.

        New text passes the classified-content guard and every person named
        passes the app's scope here, so every way an app can change a card is
        covered. ``escalation`` records how the escalation ended (server-kept,
        like ``overdue``; shown in the view).
        """
        for attempt in range(MAX_SAVE_TRIES):
            upd = parse_update(body, card.doc, self._limits)
            if attempt == 0 and upd.changes:
                await self._chat.content.check(
                    f"app:{card.app_id}",
                    "card",
                    card.out_track_id,
                    card_texts({**card.doc, **upd.changes}),
                )
                await self._check_update_scope(card.app_id, upd.changes)
            if check_version and upd.if_version is not None and upd.if_version != card.version:
                raise VersionConflict(
                    f"card is at version {card.version}, not {upd.if_version}",
                    details={"version": card.version},
                )
            doc = {**card.doc, **upd.changes}
            approval = approval_from_json(doc, card.approval)
            if upd.state is not None and approval.state not in FINAL_STATES:
                approval = close(approval, upd.state)
            before = set(actionable_by(approval_from_json(card.doc, card.approval)))
            now = now_ms(self._clock)
            rescheduled = "due_at" in upd.changes or "escalate_to" in upd.changes
            overdue = bool(card.approval.get("overdue")) and not rescheduled
            kept_escalation = None if rescheduled else card.approval.get("escalation")
            saved = await self._store.save_card(
                CardChange(
                    card_id=card.id,
                    expected_version=card.version,
                    doc=doc,
                    approval=_with_flags(
                        approval,
                        overdue=overdue or mark_overdue,
                        escalation=escalation or kept_escalation,
                    ),
                    callback=callback or card.callback,
                    pending=actionable_by(approval),
                    now=now,
                    timers=self.timers(doc, now) if rescheduled else None,
                    audit=audit,
                )
            )
            if saved is not None:
                await self._fan_out(saved)
                await self._todo_changed(saved.id, before, set(actionable_by(approval)))
                return {"card_id": saved.id, "version": saved.version, "state": approval.state}
            fresh = await self._store.get_card(card.id)
            assert fresh is not None
            card = fresh
        raise VersionConflict("the card kept changing; try again")

    async def _check_update_scope(self, app_id: str, changes: dict[str, Any]) -> None:
        """Refuse an update naming someone outside the app's (current) scope."""
        named = named_in_update(changes)
        if not named:
            return
        app = await self._store.get_app(app_id)
        if app is None:
            raise OutOfScope(f"app {app_id} no longer exists", field=named[0].path)
        await self.scope.check(app, named)

    async def escalation_outside_scope(self, card: CardRecord) -> bool:
        """Whether the card's ``escalate_to`` is now outside its app's scope.

        Checked when the escalation fires: the scope, or the members of a
        scoped unit, may have changed since the card was pushed.
        """
        target = card.doc.get("escalate_to")
        if not target:
            return False
        app = await self._store.get_app(card.app_id)
        named = [Named("escalate_to", "user", target)]
        return app is None or bool(await self.scope.outside(app, named))

    async def refuse_escalation(self, card: CardRecord, reason: str) -> None:
        """Record on the card (and in the audit log) that its escalation was refused."""
        target = card.doc.get("escalate_to")
        now = now_ms(self._clock)
        await self.apply_update(
            card,
            {},
            check_version=False,
            escalation={"to": target, "state": "refused", "reason": reason, "at": now},
            audit=AuditEntry(
                "system",
                "card.escalation_refused",
                card.id,
                {
                    "app_id": card.app_id,
                    "out_track_id": card.out_track_id,
                    "escalate_to": target,
                    "reason": reason,
                },
            ),
        )

    async def set_callback_state(self, card_id: str, state: str) -> None:
        """Record ``state`` ("failed", or "pending" on an admin retry) at the card's version."""
        await self._record_delivery(card_id, lambda: _constant(state))

    async def callback_settled(self, card_id: str) -> None:
        """A callback was delivered: "ok", or "pending" while others are still owed."""

        async def state() -> str:
            return "pending" if await self._store.pending_callbacks(card_id) else "ok"

        await self._record_delivery(card_id, state)

    async def _record_delivery(self, card_id: str, state: Callable[[], Awaitable[str]]) -> None:
        """Store the delivery status without a new version; tell holders about failures.

        Why no version: the callback carried the version the decision made,
        and the app updates with it as ``if_version`` (docs/cards.md section
        6) — a version for "delivered" would make that 409 every time. A
        change to or from "failed" is fanned out (same version, new
        ``callback``) because holders must see a failure and its end; the
        usual "pending" → "ok" is not (the next read shows it). ``state`` is
        computed after the card is read, so an action saved in between moves
        the version, the guarded write misses, and the status is decided again.
        """
        for _ in range(MAX_SAVE_TRIES):
            card = await self._store.get_card(card_id)
            if card is None:
                return
            new = await state()
            if card.callback == new:
                return
            saved = await self._store.set_card_callback(card_id, new, card.version)
            if saved is not None:
                if "failed" in (card.callback, new):
                    await self._fan_out(saved)
                return
        log.warning("card %s kept changing; its callback status was not recorded", card_id)

    async def notice(self, app: AppRecord, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidField("body must be a JSON object", field="body")
        f = Fields(body)
        title = f.req_string("title", max_len=self._limits.max_title_chars)
        text = f.req_string("text", max_len=self._limits.max_body_chars)
        urgent = f.boolean("urgent")
        # The notice text is markdown the client renders: matched as read, too.
        await self._chat.content.check(
            f"app:{app.app_id}", "notice", "notice", [title], markdown=[text]
        )
        users, groups = await self._recipients(app, body.get("to"))
        now = now_ms(self._clock)
        notice_id = "nt_" + secrets.token_urlsafe(12)
        content = {
            "title": title,
            "text": text,
            "urgent": urgent,
            "app_id": app.app_id,
            "notice_id": notice_id,
        }
        sender = f"app:{app.app_id}"
        ding_next_at = now + self._ding_interval_ms

        def message(conv: str, ding_to: tuple[str, ...]) -> NewMessage:
            return NewMessage(
                conv,
                sender,
                "app",
                "notice",
                content,
                now,
                ding_to=ding_to if urgent else (),
                ding_next_at=ding_next_at,
                card_id=notice_id,
            )

        messages = [message(notice_conv(app.app_id, u), (u,)) for u in users]
        messages += [message(g, members) for g, members in groups]
        convs = [(notice_conv(app.app_id, u), u, app.name or app.app_id) for u in users]
        stored = await self._store.deliver_notice(messages, convs, now)
        reached: set[str] = set()
        group_members = dict(groups)
        for msg in stored:
            recipients = readers(msg.conv, group_members)
            reached.update(recipients)
            await self._chat.publish_message(msg, tuple(recipients))
        return {"notice_id": notice_id, "recipients": len(reached)}

    async def notice_ding_status(self, app: AppRecord, notice_id: str) -> dict[str, Any]:
        confirmed, unconfirmed = await self._store.card_ding_status(
            notice_id, sender=f"app:{app.app_id}"
        )
        if not confirmed and not unconfirmed:
            raise NoSuchDing(f"app {app.app_id} sent no urgent notice {notice_id!r}")
        return {"notice_id": notice_id, "confirmed": confirmed, "unconfirmed": unconfirmed}

    # -- people: act, read, todo ---------------------------------------------
    async def _holder_card(self, caller: Caller, card_id: str) -> CardRecord:
        card = await self._store.get_card(card_id)
        if card is None or caller.user not in await self._store.card_holders(card_id):
            raise NoSuchCard(f"no card {card_id}")
        return card

    async def get(self, caller: Caller, card_id: str) -> dict[str, Any]:
        card = await self._holder_card(caller, card_id)
        return self.view(card, bool(await self.revealed([caller.user])))

    async def act(
        self, caller: Caller, card_id: str, action: str, action_id: str, inputs: Any
    ) -> dict[str, Any]:
        card = await self._holder_card(caller, card_id)
        for _ in range(MAX_SAVE_TRIES):
            spec = next((a for a in card.doc["actions"] if a["id"] == action), None)
            if spec is None:
                raise InvalidField(f"this card has no action {action!r}", field="action")
            values = check_inputs(card.doc, action, inputs)
            await self._chat.content.check(caller.user, "card.inputs", card.id, values.values())
            approval = approval_from_json(card.doc, card.approval)
            now = now_ms(self._clock)
            outcome = decide(
                approval, Act(action_id, caller.user, action, spec["decision"], now, values)
            )
            if isinstance(outcome, Refused):
                details = {"decided_by": outcome.decided_by} if outcome.decided_by else None
                raise REFUSALS[outcome.code](outcome.message, details=details)
            if outcome.repeat:
                return self._act_result(card, outcome.state, repeat=True)
            new = outcome.state
            payload = {
                "type": "card.action",
                "app_id": card.app_id,
                "action_id": action_id,
                "card_id": card.id,
                "out_track_id": card.out_track_id,
                # The version this decision creates: the app's ``if_version``
                # (delivery status never makes a version of its own).
                "version": card.version + 1,
                "actor": caller.user,
                "action": action,
                "decision": spec["decision"],
                "inputs": values,
                "state": new.state,
                "at": now,
            }
            saved = await self._store.save_card(
                CardChange(
                    card_id=card.id,
                    expected_version=card.version,
                    doc=card.doc,
                    approval=_with_flags(
                        new,
                        overdue=bool(card.approval.get("overdue")),
                        escalation=card.approval.get("escalation"),
                    ),
                    callback="pending",
                    pending=actionable_by(new),
                    now=now,
                    outbox=OutboxEntry(card.app_id, card.id, action_id, payload),
                    audit=AuditEntry(
                        caller.user,
                        "card.decision",
                        card.id,
                        {
                            "app_id": card.app_id,
                            "out_track_id": card.out_track_id,
                            "action": action,
                            "decision": spec["decision"],
                            "action_id": action_id,
                            "state": new.state,
                        },
                    ),
                )
            )
            if saved is None:  # someone else acted first: decide again on the new version
                fresh = await self._store.get_card(card.id)
                assert fresh is not None
                card = fresh
                continue
            self.wake_callbacks()
            await self._fan_out(saved)
            await self._todo_changed(
                saved.id, set(actionable_by(approval)), set(actionable_by(new))
            )
            return self._act_result(saved, new, repeat=False)
        raise VersionConflict("the card kept changing; try again")

    def _act_result(self, card: CardRecord, s: ApprovalState, repeat: bool) -> dict[str, Any]:
        return {
            "card_id": card.id,
            "version": card.version,
            "state": s.state,
            "decided_by": s.decided_by,
            "repeat": repeat,
        }

    async def todo(self, caller: Caller, limit: int = 100) -> dict[str, Any]:
        cards, total = await self._store.todo_cards(caller.user, limit)
        now = now_ms(self._clock)
        overdue = sum(1 for c in cards if c.doc.get("due_at") is not None and c.doc["due_at"] < now)
        reveal = bool(await self.revealed([caller.user]))
        return {
            "total": total,
            "overdue": overdue,
            "cards": [self.view(c, reveal) for c in cards],
        }

    async def changed_since(self, caller: Caller, cursor: int, limit: int) -> dict[str, Any]:
        cards = await self._store.cards_changed_for(caller.user, cursor, limit + 1)
        more = len(cards) > limit
        cards = cards[:limit]
        reveal = bool(await self.revealed([caller.user]))
        return {
            "cards": [self.view(c, reveal) for c in cards],
            "cards_cursor": cards[-1].gseq if cards else cursor,
            "cards_more": more,
        }


async def _constant(state: str) -> str:
    return state


def _with_flags(
    s: ApprovalState, *, overdue: bool, escalation: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The stored approval state plus server-kept flags (``overdue``, ``escalation``)."""
    data = approval_to_json(s)
    if overdue:
        data["overdue"] = True
    if escalation is not None:
        data["escalation"] = escalation
    return data
