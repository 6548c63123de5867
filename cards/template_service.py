"""Card templates for apps: register versions, read them back, preview a render.

The rules of a template are ``cards.templates``' (pure); this adds the store
and the view. A push by template is ``CardService.push`` (it renders through
the same ``render_card``), so a templated card is checked exactly like one
pushed whole. Templates belong to one app: every lookup is by
``(app_id, template_id)``, so app A cannot read or push B's templates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cards.model import approval_from_json, approval_to_json
from cards.private import check_private
from cards.service import CardService, FullStore
from cards.templates import check_template, check_template_id, render_card
from imserver.errors import InvalidField, NoSuchTemplate
from imserver.protocol.fields import is_user_id
from imserver.store.records import AppRecord, CardRecord
from imserver.store.templates import TemplateRecord

PREVIEW_CARD_ID = "c_preview0000"


def _version(value: Any, path: str) -> int | None:
    """An optional version number (``?version=`` or a body's ``version``)."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**53:
        raise InvalidField(f"'{path}' must be a positive integer", field=path)
    return value


def template_json(record: TemplateRecord) -> dict[str, Any]:
    return {
        "template_id": record.template_id,
        "version": record.version,
        "template": record.template,
        "slots": list(record.slots),
        "created_at": record.created_at,
    }


class TemplateService:
    def __init__(
        self, store: FullStore, cards: CardService, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._cards = cards
        self._clock = clock

    async def register(
        self, app: AppRecord, template_id: str, body: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store ``body["template"]`` as the next version; ``(answer, created)``.

        The same template as the latest version again makes no new version
        (a retried PUT is safe); the answer says which version is current.
        """
        check_template_id(template_id)
        if not isinstance(body, dict):
            raise InvalidField("body must be a JSON object", field="body")
        unknown = sorted(set(body) - {"template"})
        if unknown:
            raise InvalidField(f"{unknown[0]}: is not a template key", field=unknown[0])
        template, slots = check_template(body.get("template"), self._cards.limits)
        record, created = await self._store.put_template(
            app.app_id,
            template_id,
            template,
            slots,
            int(self._clock() * 1000),
            limit=self._cards.limits.max_templates,
        )
        return {**template_json(record), "created": created}, created

    async def get(self, app: AppRecord, template_id: str, version: Any = None) -> dict[str, Any]:
        return template_json(await self._record(app, template_id, _version(version, "version")))

    async def list_all(self, app: AppRecord) -> dict[str, Any]:
        return {
            "templates": [
                {
                    "template_id": t.template_id,
                    "version": t.latest,
                    "slots": list(t.slots),
                    "created_at": t.created_at,
                    "updated_at": t.updated_at,
                }
                for t in await self._store.list_templates(app.app_id)
            ]
        }

    async def preview(self, app: AppRecord, template_id: str, body: Any) -> dict[str, Any]:
        """The view a holder would get of a push with these variables; nothing is stored.

        ``viewer`` (optional) with ``private`` shows that holder's view of
        their private data. The view is the masked one a holder without
        ``pii:read`` gets, at version 1, before anyone has acted.
        """
        if not isinstance(body, dict):
            raise InvalidField("body must be a JSON object", field="body")
        unknown = sorted(set(body) - {"variables", "version", "private", "viewer"})
        if unknown:
            raise InvalidField(f"{unknown[0]}: is not a preview key", field=unknown[0])
        record = await self._record(app, template_id, _version(body.get("version"), "version"))
        limits = self._cards.limits
        doc = render_card(record.template, record.slots, body.get("variables"), limits)
        doc["template"] = {"template_id": record.template_id, "version": record.version}
        viewer = body.get("viewer")
        if viewer is not None and not is_user_id(viewer):
            raise InvalidField("'viewer' must be a user id", field="viewer")
        if body.get("private") is not None:
            private = body["private"]
            if not isinstance(private, dict):
                raise InvalidField("private: must be an object", field="private")
            doc["private"] = check_private(private, doc, limits)
        approval = approval_from_json(doc, {"state": "open", "decided_by": None, "decisions": []})
        now = int(self._clock() * 1000)
        card = CardRecord(
            id=PREVIEW_CARD_ID,
            app_id=app.app_id,
            out_track_id=doc["out_track_id"],
            version=1,
            gseq=0,
            doc=doc,
            approval=approval_to_json(approval),
            callback="none",
            created_at=now,
            updated_at=now,
        )
        return {
            "template_id": record.template_id,
            "version": record.version,
            "card": self._cards.view(card, reveal=False, viewer=viewer),
        }

    async def _record(
        self, app: AppRecord, template_id: str, version: int | None
    ) -> TemplateRecord:
        record = await self._store.get_template(app.app_id, check_template_id(template_id), version)
        if record is None:
            which = f"version {version} of " if version is not None else ""
            raise NoSuchTemplate(
                f"app {app.app_id} has no {which}template {template_id!r}", field="template_id"
            )
        return record
