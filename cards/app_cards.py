"""What an app does to its cards: push, read by ``out_track_id``, update.

Every way an app changes a card ends in ``apply_update``: a PATCH, a
callback's ``card_update`` answer (``cards/callbacks.py``), the overdue mark
and a refused escalation (``cards/deadlines.py``). So the classified-content
guard, the scope check of every person named and the private-data checks
run on all of them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from cards.model import approval_from_json, approval_to_json, parse_card, parse_update
from cards.policy import OPEN, ApprovalState, actionable_by, close
from cards.private import parse_private, private_texts
from cards.recipients import Recipients, plan_delivery, readers
from cards.scope import AppScope, Named, named_in_card, named_in_update
from cards.store import FullStore
from cards.templates import check_template_id, render_card
from cards.versions import MAX_SAVE_TRIES, with_flags
from cards.views import CardViews
from imserver.config import CardsConfig
from imserver.errors import (
    InvalidField,
    NoSuchCard,
    NoSuchTemplate,
    OutOfScope,
    TooManyMembers,
    VersionConflict,
)
from imserver.services.chat import ChatService, now_ms
from imserver.services.content_policy import card_texts
from imserver.store.records import (
    AppRecord,
    AuditEntry,
    CardChange,
    CardRecord,
    NewCard,
    NewMessage,
)


class AppCards:
    def __init__(
        self,
        store: FullStore,
        chat: ChatService,
        views: CardViews,
        recipients: Recipients,
        scope: AppScope,
        limits: CardsConfig,
        ding_interval_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._chat = chat
        self._views = views
        self._recipients = recipients
        self._scope = scope
        self._limits = limits
        self._ding_interval_ms = ding_interval_ms
        self._clock = clock

    async def push(self, app: AppRecord, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidField("body must be a JSON object", field="body")
        doc = await self._card_doc(app, body)
        await self._chat.content.check(
            f"app:{app.app_id}", "card", doc["out_track_id"], card_texts(doc)
        )
        users, groups = await self._recipients.resolve(app, body.get("to"))
        holders = list(dict.fromkeys([*users, *(u for _, ms in groups for u in ms)]))
        if len(holders) > self._limits.max_recipients:
            raise TooManyMembers(f"a card may reach at most {self._limits.max_recipients} users")
        await self._scope.check(app, named_in_card(doc), holders)
        if body.get("private") is not None:
            doc = await self._with_private(app.app_id, doc, body["private"], holders)
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
        plan = plan_delivery(
            app,
            users,
            groups,
            self._limits.broadcast_min_holders,
            lambda conv, to: self._card_message(app, conv, card_id, now, to if urgent else ()),
        )
        # Members of the broadcast conversation hold the card through it (cards.audience).
        addressed = set(users) if plan.audience else set()
        own_rows = [u for u in holders if u not in addressed]
        card, stored, duplicate = await self._store.create_card(
            NewCard(
                id=card_id,
                app_id=app.app_id,
                doc=doc,
                approval=approval_to_json(approval),
                pending=actionable_by(approval),
                holders=tuple(own_rows),
                now=now,
                timers=self.timers(doc, now),
                audience=plan.audience,
            ),
            plan.messages,
            plan.convs,
        )
        if not duplicate:
            for msg in stored:
                await self._views.publish_card_message(card, msg, readers(msg.conv, plan.readers))
            await self._views.todo_changed(card.id, set(), set(actionable_by(approval)))
        return {
            "card_id": card.id,
            "out_track_id": card.out_track_id,
            "version": card.version,
            "state": approval_from_json(card.doc, card.approval).state,
            "holders": len(holders)
            if not duplicate
            else len(await self._store.card_holders(card.id)),
            "duplicate": duplicate,
            **({"template": card.doc["template"]} if card.doc.get("template") else {}),
        }

    async def _card_doc(self, app: AppRecord, body: dict[str, Any]) -> dict[str, Any]:
        """The pushed card: given whole (``card``) or rendered from the app's template."""
        template_id = body.get("template_id")
        if template_id is None:
            return parse_card(body.get("card"), self._limits)
        if "card" in body:
            raise InvalidField("give either card or template_id, not both", field="card")
        if not isinstance(template_id, str):
            raise InvalidField("'template_id' must be a string", field="template_id")
        version = body.get("template_version")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise InvalidField(
                "'template_version' must be a positive integer", field="template_version"
            )
        record = await self._store.get_template(app.app_id, check_template_id(template_id), version)
        if record is None:
            which = f"version {version} of " if version is not None else ""
            raise NoSuchTemplate(
                f"app {app.app_id} has no {which}template {template_id!r}", field="template_id"
            )
        doc = render_card(record.template, record.slots, body.get("variables"), self._limits)
        doc["template"] = {"template_id": record.template_id, "version": record.version}
        return doc

    async def _with_private(
        self,
        app_id: str,
        doc: dict[str, Any],
        value: Any,
        holders: list[str] | tuple[str, ...] | None,
        card_id: str = "",
    ) -> dict[str, Any]:
        """``doc`` with its private data after ``value`` (a push's, or an update's).

        Checked here because it needs the store: each user given an entry is
        a holder of the card, and the new texts pass the classified-content
        check like every other string on the card.
        """
        current = doc.get("private") or {}
        private = parse_private(value, doc, self._limits, current=current)
        changed = {u: e for u, e in private.items() if current.get(u) != e}
        if changed:
            known = set(holders if holders is not None else await self._store.card_holders(card_id))
            strangers = [u for u in changed if u not in known]
            if strangers:
                raise InvalidField(
                    f"private.{strangers[0]}: is not a holder of this card",
                    field=f"private.{strangers[0]}",
                    details={"users": strangers[:10]},
                )
            await self._chat.content.check(
                f"app:{app_id}", "card.private", doc["out_track_id"], private_texts(changed)
            )
        out = {k: v for k, v in doc.items() if k != "private"}
        if private:
            out["private"] = private
        return out

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
        view = self._views.view(card, reveal=True)
        view["decisions"] = card.approval["decisions"]  # with inputs and action ids
        view["trail"] = card.approval.get("trail", card.approval["decisions"])  # likewise
        view["private"] = card.doc.get("private") or {}  # every holder's: the app owns them
        view["template"] = card.doc.get("template")
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
        has_private = isinstance(body, dict) and "private" in body
        private_change = body.get("private") if has_private else {}
        if has_private:
            body = {k: v for k, v in body.items() if k != "private"}
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
            if has_private or card.doc.get("private"):  # entries re-checked against the new card
                doc = await self._with_private(
                    card.app_id, doc, private_change, None, card_id=card.id
                )
            approval = approval_from_json(doc, card.approval)
            if upd.state is not None and approval.state == OPEN:
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
                    approval=with_flags(
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
                await self._views.fan_out(saved)
                await self._views.todo_changed(saved.id, before, set(actionable_by(approval)))
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
        await self._scope.check(app, named)

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
        return app is None or bool(await self._scope.outside(app, named))

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
