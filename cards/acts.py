"""A holder's side of a card: act on it, read it, their todo list, sync's cards.

``act`` reads as the path in ARCHITECTURE.md: validate (holder? actor? known
action and inputs?) → the pure state machine (``cards.policy.decide``) →
persist the new version, todo rows and the callback atomically
(``save_card``; an optimistic version check makes concurrent acts safe) →
wake the callback dispatcher → fan the new version out to every holder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cards.model import approval_from_json, check_inputs
from cards.policy import DECISION, LINK, Act, ApprovalState, Refused, actionable_by, decide
from cards.recipients import notice_conv, notice_owner
from cards.scope import AppScope, Named
from cards.store import FullStore
from cards.versions import MAX_SAVE_TRIES, with_flags
from cards.views import CardViews
from cards.workflow_inputs import parse_target, target_to_json
from imserver.errors import (
    ActionIdConflict,
    AlreadyActed,
    AlreadyActor,
    CardDecided,
    InvalidField,
    NoSuchCard,
    NoSuchStep,
    NoSuchUser,
    NotActor,
    NotYourTurn,
    OutOfScope,
    StepChanged,
    TooManyActors,
    TrailFull,
    VersionConflict,
)
from imserver.metrics import Metrics
from imserver.request_context import current_request_id
from imserver.services.caller import Caller
from imserver.services.chat import ChatService, now_ms
from imserver.store.records import (
    AuditEntry,
    CardChange,
    CardRecord,
    NewHolder,
    NewMessage,
    OutboxEntry,
)

#: The decision line's logger name is documented (docs/operations.md "Logs")
#: and operators filter on it, so it stays what it was before this module existed.
log = logging.getLogger("cards.service")

REFUSALS = {
    "not_actor": NotActor,
    "card_decided": CardDecided,
    "not_your_turn": NotYourTurn,
    "already_acted": AlreadyActed,
    "action_id_conflict": ActionIdConflict,
    "already_actor": AlreadyActor,
    "too_many_actors": TooManyActors,
    "no_such_step": NoSuchStep,
    "step_changed": StepChanged,
    "trail_full": TrailFull,
    "no_such_user": NoSuchUser,
}


class CardActs:
    def __init__(
        self,
        store: FullStore,
        chat: ChatService,
        views: CardViews,
        scope: AppScope,
        metrics: Metrics,
        ding_interval_ms: int,
        wake_callbacks: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``wake_callbacks``: called after an action joins the outbox."""
        self._store = store
        self._chat = chat
        self._views = views
        self._scope = scope
        self._metrics = metrics
        self._ding_interval_ms = ding_interval_ms
        self._wake_callbacks = wake_callbacks
        self._clock = clock

    async def holder_card(self, caller: Caller, card_id: str) -> CardRecord:
        card = await self._store.get_card(card_id)
        if card is None or caller.user not in await self._store.card_holders(card_id):
            raise NoSuchCard(f"no card {card_id}")
        return card

    async def get(self, caller: Caller, card_id: str) -> dict[str, Any]:
        card = await self.holder_card(caller, card_id)
        return self._views.view(card, bool(await self._views.revealed([caller.user])), caller.user)

    async def act(
        self,
        caller: Caller,
        card_id: str,
        action: str,
        action_id: str,
        inputs: Any,
        target: Any = None,
    ) -> dict[str, Any]:
        """One person's act: a decision, or an OA workflow act (docs/cards.md "OA actions").

        ``target`` is what a 转交 / 加签 / 退回 points at (``cards.workflow_inputs``).
        Everything that needs I/O about it (the user exists, is enabled and
        inside the app's scope) is checked before the state machine decides.
        """
        started = time.perf_counter()  # imserver_card_act_to_callback_enqueued_seconds
        card = await self.holder_card(caller, card_id)
        checked_user: str | None = None
        for _ in range(MAX_SAVE_TRIES):
            spec = next((a for a in card.doc["actions"] if a["id"] == action), None)
            if spec is None:
                raise InvalidField(f"this card has no action {action!r}", field="action")
            kind = spec.get("kind", DECISION)
            if kind == LINK:
                raise InvalidField(
                    f"{action!r} is a link button: it opens its url and is not acted on",
                    field="action",
                )
            aimed = parse_target(card.doc, spec, target)
            values = check_inputs(card.doc, action, inputs)
            await self._chat.content.check(caller.user, "card.inputs", card.id, values.values())
            if aimed is not None and aimed.user is not None and aimed.user != checked_user:
                await self._check_new_actor(card, aimed.user)
                checked_user = aimed.user
            approval = approval_from_json(card.doc, card.approval)
            now = now_ms(self._clock)
            outcome = decide(
                approval,
                Act(action_id, caller.user, action, spec.get("decision"), now, values, kind, aimed),
            )
            if isinstance(outcome, Refused):
                details = {"decided_by": outcome.decided_by} if outcome.decided_by else None
                raise REFUSALS[outcome.code](outcome.message, details=details)
            if outcome.repeat:
                return self._act_result(card, outcome.state, repeat=True)
            new = outcome.state
            doc = _with_actors(card.doc, new)
            joining = await self._joining(card, approval, new, now)
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
                "kind": kind,
                "decision": spec.get("decision"),
                # 转交 / 加签: {"user", "position"?}; 退回: {"to", "step"?, "user"?}; else null
                "target": target_to_json(outcome.record.target),
                "inputs": values,
                "state": new.state,
                # Who approves now, in order (转交 and 加签 change it): the OA mirrors it.
                "actors": list(new.policy.actors) if new.policy is not None else [],
                "actionable_by": list(actionable_by(new)),
                "at": now,
            }
            request_id = current_request_id()
            if request_id is not None:  # the callback carries it (X-Request-Id) and logs it
                payload["request_id"] = request_id
            saved_holders = await self._store.save_card_holders(
                CardChange(
                    card_id=card.id,
                    expected_version=card.version,
                    doc=doc,
                    approval=with_flags(
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
                        "card.decision" if kind == DECISION else f"card.{kind}",
                        card.id,
                        {
                            "app_id": card.app_id,
                            "out_track_id": card.out_track_id,
                            "action": action,
                            "decision": spec.get("decision"),
                            "action_id": action_id,
                            "state": new.state,
                            **({"target": payload["target"]} if payload["target"] else {}),
                        },
                    ),
                    new_holders=joining,
                )
            )
            saved, given = saved_holders if saved_holders is not None else (None, [])
            if saved is None:  # someone else acted first: decide again on the new version
                fresh = await self._store.get_card(card.id)
                assert fresh is not None
                card = fresh
                continue
            self._metrics.card_act_enqueued.observe(time.perf_counter() - started)
            log.info(
                "card %s: %s decided %s (%s), action %s; callback queued",
                card.id,
                caller.user,
                action,
                new.state,
                action_id,
                extra={"card_id": card.id, "action_id": action_id, "app_id": card.app_id},
            )
            self._wake_callbacks()
            for msg in given:  # 转交 / 加签 to someone new: the card in their notice conv
                await self._views.publish_card_message(saved, msg, (notice_owner(msg.conv),))
            new_users = {notice_owner(m.conv) for m in given}
            holders = await self._store.card_holders(saved.id)
            await self._views.fan_out(saved, [u for u in holders if u not in new_users])
            await self._views.todo_changed(
                saved.id, set(actionable_by(approval)), set(actionable_by(new))
            )
            return self._act_result(saved, new, repeat=False)
        raise VersionConflict("the card kept changing; try again")

    async def _check_new_actor(self, card: CardRecord, user: str) -> None:
        """A 转交 / 加签 target: an enabled user, inside the app's scope (``target.user``).

        Reachable means the server can hand them the card: they exist, are not
        disabled, and the app may reach them (or they already hold the card
        through a scoped group), exactly as if the app had named them itself.
        """
        if not await self._store.existing_users([user]):
            raise NoSuchUser(f"no such user: {user}", field="target.user")
        app = await self._store.get_app(card.app_id)
        if app is None:
            raise OutOfScope(f"app {card.app_id} no longer exists", field="target.user")
        holders = await self._store.card_holders(card.id)
        await self._scope.check(app, [Named("target.user", "user", user, True)], holders)

    async def _joining(
        self, card: CardRecord, before: ApprovalState, after: ApprovalState, now: int
    ) -> tuple[NewHolder, ...]:
        """New approvers (转交 / 加签) who do not hold the card yet: they receive it now."""
        old = set(before.policy.actors) if before.policy is not None else set()
        added = [a for a in (after.policy.actors if after.policy else ()) if a not in old]
        if not added:
            return ()
        holders = set(await self._store.card_holders(card.id))
        added = [a for a in added if a not in holders]
        if not added:
            return ()
        app = await self._store.get_app(card.app_id)
        name = (app.name if app is not None else "") or card.app_id
        urgent = bool(card.doc.get("urgent"))
        out = []
        for user in added:
            conv = notice_conv(card.app_id, user)
            message = NewMessage(
                conv=conv,
                sender=f"app:{card.app_id}",
                device="app",
                kind="card",
                body={"card_id": card.id},
                ts=now,
                ding_to=(user,) if urgent else (),
                ding_next_at=now + self._ding_interval_ms,
                card_id=card.id,
            )
            out.append(NewHolder(user, message, (conv, user, name)))
        return tuple(out)

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
        reveal = bool(await self._views.revealed([caller.user]))
        return {
            "total": total,
            "overdue": overdue,
            "cards": [self._views.view(c, reveal, caller.user) for c in cards],
        }

    async def changed_since(self, caller: Caller, cursor: int, limit: int) -> dict[str, Any]:
        cards = await self._store.cards_changed_for(caller.user, cursor, limit + 1)
        more = len(cards) > limit
        cards = cards[:limit]
        reveal = bool(await self._views.revealed([caller.user]))
        return {
            "cards": [self._views.view(c, reveal, caller.user) for c in cards],
            "cards_cursor": cards[-1].gseq if cards else cursor,
            "cards_more": more,
        }


def _with_actors(doc: dict[str, Any], s: ApprovalState) -> dict[str, Any]:
    """The document with the state's actors (转交 / 加签 change them; the view shows them)."""
    policy = doc.get("policy")
    if policy is None or s.policy is None or tuple(policy["actors"]) == s.policy.actors:
        return doc
    return {**doc, "policy": {**policy, "actors": list(s.policy.actors)}}
